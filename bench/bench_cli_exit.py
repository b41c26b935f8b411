"""How long a stage's process takes to end once its work is done, through `vld.errors.run_cli`
(which freezes the garbage collector first) against the same process ending without it.

    .venv/bin/python bench/bench_cli_exit.py            # 5 alternated rounds, about a minute
    .venv/bin/python bench/bench_cli_exit.py --rounds 2 --imports "torch mlflow"

After one uncounted warm-up process, each round starts two fresh processes that import what a
training stage imports (`--imports`), note the time their `main` returns, and end: one through
run_cli, one (the reference) by returning to the interpreter, whose exit then collects the
whole heap. The exit time is from `main`'s return to the parent seeing the process gone.
Printed: the CPU (as runs record it), each process's exit and total time, the medians and their ratio. Run it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CHILD = """
import gc, sys, time
t0 = time.time()
for name in sys.argv[2].split():
    __import__(name)
def main():
    print(f"objects {len(gc.get_objects())} imports {time.time() - t0:.3f} returned {time.time():.6f}", flush=True)
if sys.argv[1] == "run_cli":
    from vld.errors import run_cli
    run_cli(main)
else:
    main()
"""

TRAINING_STAGE = "lightning mlflow vld.train.stacked vld.pipeline.tracking vld.model"


def one_process(ending: str, imports: str) -> dict:
    start = time.time()
    proc = subprocess.run([sys.executable, "-c", CHILD, ending, imports], capture_output=True, text=True, check=True)
    end = time.time()
    fields = proc.stdout.split()
    returned = float(fields[fields.index("returned") + 1])
    return {"objects": int(fields[1]), "imports": float(fields[3]), "exit": end - returned, "total": end - start}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--imports", default=TRAINING_STAGE, help="modules the processes import (space-separated)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    from vld.machine import describe_machine, machine_label

    times = {"run_cli": [], "reference": []}
    print(f"# CPU: {machine_label(describe_machine())}")
    print(f"imports: {args.imports}")
    one_process("reference", args.imports)  # warm-up, not counted: the first reads every file from disk
    print("| round | ending | objects | import s | exit s | total s |\n|---:|---|---:|---:|---:|---:|")
    for round_ in range(args.rounds):
        order = ("run_cli", "reference") if round_ % 2 == 0 else ("reference", "run_cli")
        for ending in order:
            got = one_process(ending, args.imports)
            times[ending].append(got)
            print(f"| {round_} | {ending} | {got['objects']:,} | {got['imports']:.2f} | {got['exit']:.3f} | {got['total']:.2f} |")
    median = {e: {k: statistics.median(t[k] for t in ts) for k in ("exit", "total")} for e, ts in times.items()}
    for key in ("exit", "total"):
        print(f"median {key} s: run_cli {median['run_cli'][key]:.3f}, reference {median['reference'][key]:.3f}, "
              f"run_cli / reference {median['run_cli'][key] / median['reference'][key]:.2f}")


if __name__ == "__main__":
    main()
