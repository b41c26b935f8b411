"""How often the iGSM judge accepts a one-edit mutant of a correct solution.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/igsm_judge_mutants.py [--n 300]

A mutant replaces one symbol of a solution by another symbol of it, or one number by a number
one above or below (mod 23). Every such mutant breaks the solution (a symbol read with the
wrong meaning or value, an operation or a value that no longer holds), so every accepted mutant
is printed and counted as wrongly accepted.
"""

from __future__ import annotations

import argparse
import random
import re

from vld.data.igsm.generator import PRESETS, Generator, light_op
from vld.data.igsm.judge import judge

TOKEN = re.compile(r"(?<![A-Za-z'])([A-Za-z]|\d+)(?![A-Za-z'])")


def mutants(solution: str):
    symbols = sorted(set(re.findall(r" as ([A-Za-z]);", solution)) | set(re.findall(r"; ([A-Za-z]) = ", solution)))
    for m in TOKEN.finditer(solution):
        if solution[max(0, m.start() - 9) : m.start()].endswith("Define ") or solution[:m.start()].endswith("Define"):
            continue
        tok = m.group(1)
        if tok.isdigit():
            subs = [str((int(tok) + d) % 23) for d in (1, -1)]
        elif tok in symbols:
            subs = [s for s in symbols if s != tok]
        else:
            continue
        for sub in subs:
            yield solution[: m.start()] + sub + solution[m.end() :]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    gen = Generator(PRESETS["med"])
    rng = random.Random(0)
    total = accepted = 0
    for i in range(args.n):
        P = gen.make(rng, light_op(rng, 15) if i % 2 else 15, "train" if i % 2 else "test")
        for bad in mutants(P.solution):
            total += 1
            if judge(P.text, bad, str(P.answer), gen.lexicon).solution_correct:
                accepted += 1
                print("accepted:", bad[:300])
    print(f"one-edit mutants: {total}; wrongly accepted: {accepted} ({100 * accepted / max(1, total):.3f} %)")


if __name__ == "__main__":
    main()
