"""vld's iGSM generator against the reference generator, every figure counted from text alike.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/igsm_vs_reference.py \
        --reference /path/to/iGSM --cache /tmp/igsm-ref     # 10,000 ours; 6,000 / 4,000 of the reference
    ... --ours 300 --ref 20 --ref-test 4 --sets "med train"  # a smoke run

`--reference` is a checkout of the reference implementation of "Physics of Language Models,
Part 2.1" (facebookresearch/iGSM, or a copy with the same math_gen / data_gen / tools / const
packages). It is imported in a child process of its own and run as its own pretraining
generator does (light op law, detail level 0 = the detailed solution, permutation level 5, the
"pq" format, training bins 0-15 for the training set and 16-22 for the fixed-op test sets). Its
GPT-2 tokenizer only turns text into ids the counts never read, and loading it would need the
network: the child gives the reference a stand-in tokenizer instead, so the run is offline.

Each generator is asked for problem sentences, question, solution, answer and the item names of
its layers (used only to cut "A's B" into two items: a name may contain "'s"); `count` reads every figure from those strings alone (so both sides are counted by the
same code): a parameter is an instance one when a problem sentence states it ("The number of
each S equals ..."), otherwise abstract; layers are read from the stated edges (an item's layer
is its distance from an item no edge leads to), so a layer counts the items its text mentions;
op is the sum over solution steps of max(1, binary operations written). Structure-counted depth
and widths (the generators' own) are printed beside the text-counted ones.

The reference generator is slow (15-25 problems per second on one core here, about 250 times
slower than vld's), so its problems are cached by chunk under `--cache` (chunk c of a set has
seed `--seed` * 1000 + c); `--jobs` runs that many chunks at once. Ours: chunk c of a set draws
from random.Random(chunk_seed(seed, c)), as the data-set writer does. Standard errors: a share
of problems is binomial; a share of sentences or layers, and a mean, are ratio estimates over
problems (clustered by problem). "z" is the difference over its standard error.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CHUNK = 250
# name, preset, op (None: the light law), split
SETS = (("med train", "med", None, "train"), ("med op15", "med", 15, "test"), ("med op20", "med", 20, "test"),
        ("hard train", "hard", None, "train"))
PRESET = {"med": (15, 20), "hard": (21, 28)}  # max_op, max_edge

# ---- the reference, run in a child process ------------------------------------------------


def reference_chunk(reference: str, preset: str, op, split: str, n: int, seed: int) -> list[dict]:
    """n problems of the reference generator (this process imports it: call in a child)."""
    import types

    import numpy as np

    class StandInTokenizer:  # the reference tokenizes text for its own training files only
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            return cls()

        def encode(self, text, return_tensors=None):
            import torch
            return torch.zeros((1, 1), dtype=torch.long)

    sys.modules["transformers"] = types.SimpleNamespace(GPT2Tokenizer=StandInTokenizer)
    sys.path.insert(0, reference)
    from const.params import test_bin, train_bin
    from data_gen.pretrain.id_gen import IdGen

    random.seed(seed)
    np.random.seed(seed % 2**32)
    max_op, max_edge = PRESET[preset]
    bins = train_bin if split == "train" else test_bin
    out = []
    for _ in range(n):
        gen = IdGen(max_op=max_op, max_edge=max_edge, op=op, perm_level="5", detail_level="000")
        gen.gen_prob(bins, p_format="pq")
        P = gen.problem
        out.append({"sentences": P.problem[:-1], "question": P.problem[-1], "solution": gen.sol.strip(),
                    "answer": str(P.ans), "names": [x for layer in P.N for x in layer],
                    "d": int(P.d), "widths": [int(w) for w in P.l]})
    return out


def reference_set(args, name: str, preset: str, op, split: str, n: int) -> list[dict]:
    cache = Path(args.cache) / name.replace(" ", "_")
    cache.mkdir(parents=True, exist_ok=True)
    chunks = [(c, min(CHUNK, n - c * CHUNK)) for c in range(math.ceil(n / CHUNK))]

    def path(c):
        return cache / f"seed{args.seed}_chunk{c}.jsonl"

    def run(task):
        c, count = task
        p = path(c)
        if p.exists() and sum(1 for _ in p.open()) >= count:
            return
        tmp = p.with_suffix(".tmp")
        subprocess.run([sys.executable, __file__, "--reference", args.reference, "--child",
                        json.dumps([preset, op, split, count, args.seed * 1000 + c]), "--child-out", str(tmp)], check=True)
        tmp.replace(p)
        print(f"  reference {name}: chunk {c} done", file=sys.stderr, flush=True)

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run, chunks))
    rows = []
    for c, count in chunks:
        rows += [json.loads(line) for line in path(c).open()][:count]
    return rows


# ---- vld -----------------------------------------------------------------------------------


def vld_set(preset: str, op, split: str, n: int, seed: int) -> list[dict]:
    from vld.data.igsm.dataset import chunk_seed
    from vld.data.igsm.generator import PRESETS, Generator, light_op

    gen = Generator(PRESETS[preset])
    max_op = PRESETS[preset].max_op
    out = []
    for c in range(math.ceil(n / CHUNK)):
        rng = random.Random(chunk_seed(seed, c))
        for _ in range(min(CHUNK, n - c * CHUNK)):
            P = gen.make(rng, op if op is not None else light_op(rng, max_op), split)
            out.append({"sentences": P.sentences, "question": P.question, "solution": P.solution,
                        "answer": str(P.answer), "names": list(P.names), "d": P.d, "widths": list(P.widths)})
    return out


# ---- counting, from text -------------------------------------------------------------------

STATED = re.compile(r"The number of each (.+?) equals (.+)$")
HAS = re.compile(r"(.+) has (.+)$")  # the reference's form for a parameter with no predecessor
QUESTION = re.compile(r"How many (.+) does (.+) have\?$")
DEFINE = re.compile(r"Define (.+) as ([A-Za-z])$")
NUMBER = re.compile(r"\d+$")
MORE = re.compile(r"(\d+) more than ")
EACH = re.compile(r"(?<![A-Za-z])each ")  # a reference; not the "each" inside "Peach Jam"


@dataclasses.dataclass
class Counted:
    """One problem's figures."""

    abstract_step: bool
    abstract_question: bool
    answer_zero: bool
    steps: int
    op: int
    sentences: int
    plain_number: int
    reads_abstract: int
    more_than: int
    more_than_zero: int
    times: int
    sum_of: int
    difference: int
    depth: int
    widths: list
    needed_sentences: int  # problem sentences of parameters the solution defines
    needed_plain: int
    needed_op: int  # the op of the solution's instance steps


def split_pair(pair: str, names: set) -> tuple[str, str]:
    """'A's B' into (A, B), both item names (names may contain "'s")."""
    cuts = [m.start() for m in re.finditer("'s ", pair)]
    for i in cuts:
        if pair[:i] in names and pair[i + 3:] in names:
            return pair[:i], pair[i + 3:]
    raise ValueError(f"no split of {pair!r} into two item names")


def count(row: dict) -> Counted:
    names = set(row["names"])
    instance, rhs_of = set(), {}
    for s in row["sentences"]:
        m = STATED.match(s)
        if m:
            instance.add(m.group(1))
            rhs_of[m.group(1)] = m.group(2)
        else:
            m = HAS.match(s)
            if not m:
                raise ValueError(f"unparsed sentence {s!r}")
            instance.add(f"{m.group(1)}'s {m.group(2)}")
            rhs_of[f"{m.group(1)}'s {m.group(2)}"] = ""
    plain = reads = more = more0 = times = sums = diffs = 0
    for rhs in rhs_of.values():
        plain += bool(NUMBER.match(rhs))
        refs = [piece.removesuffix(", ").removesuffix(" and ") for piece in EACH.split(rhs)[1:]]
        reads += any(r not in instance for r in refs)
        m = MORE.match(rhs)
        if m:
            more += 1
            more0 += m.group(1) == "0"
        times += " times as much as " in rhs
        sums += "the sum of " in rhs
        diffs += "the difference of " in rhs
    m = QUESTION.match(row["question"])
    if not m:
        raise ValueError(f"unparsed question {row['question']!r}")
    asked = f"{m.group(2)}'s {m.group(1)}"
    steps = abstract = op = needed = needed_plain = needed_op = 0
    for step in row["solution"].removesuffix(".").split(". "):
        parts = step.split("; ")
        m = DEFINE.match(parts[0])
        if not m:
            raise ValueError(f"unparsed step {step!r}")
        steps += 1
        abstract += m.group(1) not in instance
        binary = 0
        for assignment in parts[1:]:
            expr = assignment.removeprefix("so ").split(" = ")[1]
            binary += sum(expr.count(f" {o} ") for o in "+-*")
        op += max(1, binary)
        if m.group(1) in instance:
            needed += 1
            needed_plain += bool(NUMBER.match(rhs_of[m.group(1)]))
            needed_op += max(1, binary)
    # layers from the stated edges: an item's layer is its distance from an item no edge leads to
    children: dict[str, set] = {}
    has_parent = set()
    for pair in instance:
        a, b = split_pair(pair, names)
        children.setdefault(a, set()).add(b)
        has_parent.add(b)
    layer = {a: 0 for a in children if a not in has_parent}
    frontier = list(layer)
    while frontier:
        nxt = []
        for a in frontier:
            for b in children.get(a, ()):
                if b not in layer:
                    layer[b] = layer[a] + 1
                    nxt.append(b)
        frontier = nxt
    depth = max(layer.values()) + 1
    widths = [sum(1 for v in layer.values() if v == i) for i in range(depth)]
    return Counted(abstract > 0, asked not in instance, row["answer"] == "0", steps, op, len(rhs_of), plain, reads,
                   more, more0, times, sums, diffs, depth, widths, needed, needed_plain, needed_op)


def share(flags) -> tuple[float, float]:
    flags = list(flags)
    n = len(flags)
    p = sum(flags) / n
    return p, math.sqrt(p * (1 - p) / n)


def ratio(pairs) -> tuple[float, float]:
    """sum(y) / sum(x) over problems and its standard error (linearised, clustered by problem)."""
    pairs = list(pairs)
    n = len(pairs)
    sx = sum(x for _, x in pairs)
    r = sum(y for y, _ in pairs) / sx
    var = sum((y - r * x) ** 2 for y, x in pairs) * n / (n - 1) / sx**2
    return r, math.sqrt(var)


def mean(values) -> tuple[float, float]:
    return ratio((v, 1) for v in values)


def measures(rows: list[dict]) -> dict[str, tuple[float, float, bool]]:
    """name -> (value, standard error, is a share)."""
    cs = [count(r) for r in rows]
    out = {
        "solutions with an abstract step": (*share(c.abstract_step for c in cs), True),
        "questions asking an abstract parameter": (*share(c.abstract_question for c in cs), True),
        "stated parameters reading an abstract one": (*ratio((c.reads_abstract, c.sentences) for c in cs), True),
        "answers equal to 0": (*share(c.answer_zero for c in cs), True),
        "sentences stating a plain number": (*ratio((c.plain_number, c.sentences) for c in cs), True),
        "  of the solution's parameters": (*ratio((c.needed_plain, c.needed_sentences) for c in cs), True),
        "  of the distractors": (*ratio((c.plain_number - c.needed_plain, c.sentences - c.needed_sentences) for c in cs), True),
        "op per instance step, mean": (*ratio((c.needed_op, c.needed_sentences) for c in cs), False),
        "abstract steps, mean": (*mean(c.steps - c.needed_sentences for c in cs), False),
        "op in abstract steps, mean": (*mean(c.op - c.needed_op for c in cs), False),
        "'more than' sentences": (*ratio((c.more_than, c.sentences) for c in cs), True),
        "'times as much as' sentences": (*ratio((c.times, c.sentences) for c in cs), True),
        "'the sum of' sentences": (*ratio((c.sum_of, c.sentences) for c in cs), True),
        "'the difference of' sentences": (*ratio((c.difference, c.sentences) for c in cs), True),
        "K = 0 among 'more than'": (*ratio((c.more_than_zero, c.more_than) for c in cs), True),
        "solution steps, mean": (*mean(c.steps for c in cs), False),
        "op, mean": (*mean(c.op for c in cs), False),
        "structure edges, mean": (*mean(c.sentences for c in cs), False),
    }
    for d in (2, 3, 4):
        out[f"depth {d}"] = (*share(c.depth == d for c in cs), True)
    for w in (1, 2, 3, 4):
        out[f"layer width {w}"] = (*ratio((sum(x == w for x in c.widths), len(c.widths)) for c in cs), True)
    low = [c for c in cs if c.op <= 3]
    if low:
        out["depth 2 among op 1-3"] = (*share(c.depth == 2 for c in low), True)
    for d in (2, 3, 4):  # the generators' own structure, for reference
        out[f"structure depth {d}"] = (*share(r["d"] == d for r in rows), True)
    for w in (2, 3, 4):
        out[f"structure width {w}"] = (*ratio((sum(x == w for x in r["widths"]), len(r["widths"])) for r in rows), True)
    return out


def table(name: str, ours: dict, ref: dict, n_ours: int, n_ref: int) -> str:
    lines = [f"## {name} (vld {n_ours:,} / reference {n_ref:,} problems)", "",
             "| measure | vld | reference | z |", "|---|---|---|---|"]
    for key in ours:
        if key not in ref:
            continue
        (a, sa, pct), (b, sb, _) = ours[key], ref[key]
        z = (a - b) / math.sqrt(sa**2 + sb**2) if sa or sb else 0.0
        fmt = (lambda v, s: f"{100 * v:.1f} ± {100 * s:.1f}%") if pct else (lambda v, s: f"{v:.2f} ± {s:.2f}")
        lines.append(f"| {key} | {fmt(a, sa)} | {fmt(b, sb)} | {z:+.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", required=True, help="checkout of the reference iGSM implementation")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "igsm-reference-cache"),
                    help="folder for the reference's problems (reused by later runs)")
    ap.add_argument("--ours", type=int, default=10000, help="vld problems per set")
    ap.add_argument("--ref", type=int, default=6000, help="reference problems per training set")
    ap.add_argument("--ref-test", type=int, default=4000, help="reference problems per fixed-op test set")
    ap.add_argument("--sets", default=",".join(s[0] for s in SETS), help=f"comma-separated among: {', '.join(s[0] for s in SETS)}")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--jobs", type=int, default=1, help="reference chunks generated at once")
    ap.add_argument("--out", help="also write the tables (markdown) here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        preset, op, split, n, seed = json.loads(args.child)
        rows = reference_chunk(args.reference, preset, op, split, n, seed)
        with open(args.child_out, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return
    if not (Path(args.reference) / "math_gen" / "problem_gen.py").is_file():
        sys.exit(f"--reference: {args.reference} has no math_gen/problem_gen.py (not an iGSM checkout)")
    wanted = [s.strip() for s in args.sets.split(",")]
    unknown = [s for s in wanted if s not in {x[0] for x in SETS}]
    if unknown:
        sys.exit(f"--sets: unknown set(s) {', '.join(unknown)}")
    tables = []
    for name, preset, op, split in SETS:
        if name not in wanted:
            continue
        n_ref = args.ref if op is None else args.ref_test
        ref_rows = reference_set(args, name, preset, op, split, n_ref)
        our_rows = vld_set(preset, op, split, args.ours, args.seed)
        tables.append(table(name, measures(our_rows), measures(ref_rows), len(our_rows), len(ref_rows)))
        print(tables[-1] + "\n", flush=True)
    if args.out:
        Path(args.out).write_text("\n\n".join(tables) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
