"""The text counter of bench/igsm_vs_reference.py (what compares vld with the reference
generator) against the graphs vld's problems were written from: every figure it reads from the
text must be the one the Problem object holds."""

import random
import sys
from pathlib import Path

from vld.data.igsm.generator import ABS, PRESETS, Generator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from igsm_vs_reference import count, measures, vld_set  # noqa: E402


def test_text_counts_equal_the_problem_graphs():
    gen = Generator(PRESETS["med"])
    rng = random.Random(31)
    n = 0
    for op in (1, 2, 4, 7, 11, 15, 20):
        for _ in range(40):
            P = gen.make(rng, op, "train" if op <= 15 else "test")
            row = {"sentences": P.sentences, "question": P.question, "solution": P.solution,
                   "answer": str(P.answer), "names": list(P.names)}
            c = count(row)
            need = P.necessary(P.query)
            needed_edges = [r for r in need if r < ABS]
            assert c.abstract_step == any(r >= ABS for r in need)
            assert c.abstract_question == (P.query >= ABS)
            assert c.answer_zero == (P.answer == 0)
            assert c.steps == len(need) and c.op == P.op == op
            assert c.sentences == len(P.edges) and c.needed_sentences == len(needed_edges)
            assert c.needed_plain == sum(P.defs[r][0] == "c" for r in needed_edges)
            assert c.plain_number == sum(kind == "c" for kind, *_ in P.defs.values())
            assert c.reads_abstract == sum(any(x >= ABS for x in refs) for _, _, refs, _ in P.defs.values())
            # every lower item has a parent, so only top items without children go unseen in text
            parents = {p for p, _ in P.edges}
            assert c.depth == P.d
            assert c.widths == [sum(1 for i, layer in enumerate(P.item_layer) if layer == 0 and i in parents)] + P.widths[1:]
            n += 1
    assert n == 280


def test_measures_of_a_set_are_shares_with_standard_errors():
    rows = vld_set("med", None, "train", 300, 5)
    assert len(rows) == 300
    m = measures(rows)
    zero, se, is_share = m["answers equal to 0"]
    assert is_share and zero == sum(r["answer"] == "0" for r in rows) / 300
    assert abs(se - (zero * (1 - zero) / 300) ** 0.5) < 1e-12
    assert abs(sum(m[f"layer width {w}"][0] for w in (1, 2, 3, 4)) - 1) < 1e-9
    assert abs(sum(m[f"depth {d}"][0] for d in (2, 3, 4)) - 1) < 1e-9
