"""Shape of generated iGSM sets, the measures that compare vld's generator with the reference's.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/igsm_shape.py            # 2,000 / 300 / 300
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/igsm_shape.py --n 500    # quicker

Sets: med train (light law), med test op15 and op20, hard train; then depth by op, K = 0 among
"more than" sentences, reask ops and sentence inversions by permutation level. Every figure is
read from the Problem objects (the graphs the text was written from); `measure` is also what
tests/test_igsm_shape.py checks against the reference's figures.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import random

from vld.data.igsm.generator import ABS, PRESETS, Generator, light_op


def make_set(preset: str, split: str, op, n: int, seed: int, **changes) -> list:
    cfg = dataclasses.replace(PRESETS[preset], **changes)
    gen = Generator(cfg)
    rng = random.Random(seed)
    return gen, [gen.make(rng, op if op is not None else light_op(rng, cfg.max_op), split) for _ in range(n)]


def measure(gen: Generator, problems: list) -> dict:
    """Shares (in 0..1) and means over a list of problems."""
    n = len(problems)
    abstract_step = abstract_question = zero = edges = 0
    sentences = reading = 0
    widths = collections.Counter()
    for P in problems:
        need = P.necessary(P.query)
        abstract_step += any(r >= ABS for r in need)
        abstract_question += P.query >= ABS
        zero += P.answer == 0
        edges += len(P.edges)
        for kind, const, refs, _ in P.defs.values():
            sentences += 1
            reading += any(r >= ABS for r in refs)
        widths.update(P.widths)
    layers = sum(widths.values())
    return {
        "abstract_step": abstract_step / n,
        "abstract_question": abstract_question / n,
        "reads_abstract": reading / sentences,
        "answer_zero": zero / n,
        "edges_mean": edges / n,
        "width_2": widths[2] / layers,
        "width_3": widths[3] / layers,
        "width_4": widths[4] / layers,
        "op_mean": sum(P.op for P in problems) / n,
    }


def depth_shares(problems: list, ops) -> dict:
    picked = [P for P in problems if P.op in ops]
    c = collections.Counter(P.d for P in picked)
    return {d: c[d] / max(1, len(picked)) for d in (2, 3, 4)}


def more_than_zero_share(problems: list) -> float:
    more = [const for P in problems for kind, const, _, _ in P.defs.values() if kind in "mM"]
    return sum(k == 0 for k in more) / max(1, len(more))


def inversions_per_10(problems: list) -> float:
    """Inversions of the stated sentence order against the order it was permuted from, per 10 sentences."""
    inv = total = 0
    for P in problems:
        pos = {ref: i for i, ref in enumerate(P.start_order)}
        seq = [pos[r] for r in P.stated_order]
        inv += sum(1 for i in range(len(seq)) for j in range(i + 1, len(seq)) if seq[i] > seq[j])
        total += len(seq)
    return 10 * inv / max(1, total)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="problems of each training set (test sets: n / 6.67)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n, nt = args.n, max(50, args.n * 3 // 20)
    sets = {}
    for name, preset, split, op, count in (("med train", "med", "train", None, n), ("med op15", "med", "test", 15, nt),
                                            ("med op20", "med", "test", 20, nt), ("hard train", "hard", "train", None, n)):
        sets[name] = make_set(preset, split, op, count, args.seed)
    rows = {name: measure(*gp) for name, gp in sets.items()}
    keys = list(next(iter(rows.values())))
    print(f"{'measure':<20}" + "".join(f"{name:>12}" for name in rows))
    for k in keys:
        print(f"{k:<20}" + "".join(f"{rows[name][k] * (1 if k.endswith('mean') else 100):>11.1f}{'' if k.endswith('mean') else '%'}" for name in rows))
    med = sets["med train"][1]
    print("depth d=2/3/4 by op (med train): " + "; ".join(
        f"op {lo}-{hi}: " + "/".join(f"{100 * v:.0f}" for v in depth_shares(med, range(lo, hi + 1)).values()) + "%"
        for lo, hi in ((1, 3), (4, 7), (8, 11), (12, 15))))
    print(f"K = 0 among 'more than' sentences (med train): {100 * more_than_zero_share(med):.1f}%")
    for label, op, split in (("reask med train", None, "train"), ("reask med test op15", 15, "test")):
        gen, probs = make_set("med", split, op, nt, args.seed, reask=True)
        ops = collections.Counter(P.op for P in probs)
        print(f"{label}: op mean {sum(P.op for P in probs) / len(probs):.1f}, op 1 {100 * ops[1] / len(probs):.0f}%, "
              f"range {min(ops)}-{max(ops)}, abstract questions {100 * sum(P.query >= ABS for P in probs) / len(probs):.0f}%")
    if hasattr(med[0], "start_order"):
        print("inversions per 10 sentences by perm level: " + ", ".join(
            f"{level}: {inversions_per_10(make_set('med', 'train', None, nt, args.seed, perm_level=level)[1]):.1f}"
            for level in range(0, 7)))


if __name__ == "__main__":
    main()
