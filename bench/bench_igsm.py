"""iGSM generation benchmark: problems per second, single process and all cores, and token lengths.

    .venv/bin/python bench/bench_igsm.py            # a few thousand problems per set (~1-2 min)
    .venv/bin/python bench/bench_igsm.py --full     # also the paper's 500,000-problem med train set

Sets: med train (light law), hard train, med test op15 and op20. Columns:
  gen/s      problems built (structure, graph, text, solution) per second, one process
  gen/cpu-s  the same per CPU-second of that process (less sensitive to a loaded machine)
  +tok/s     the same plus tokenization and the problems.jsonl line, one process
  all/s      end to end with every core: generate_dataset (tokenize + write atomically)
Ratios are printed against the target of 2,600 med training problems per second per core, the
reference generator's 26 problems per second per core (measured on this kind of machine, issue 3),
and a pure-Python calibration loop timed in the same run (to compare runs on a loaded machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from vld.data.igsm import dataset as ds
from vld.data.igsm.generator import PRESETS, Generator, light_op
from vld.data.igsm.tokenizer import IgsmTokenizer

TARGET = 2600.0
REFERENCE_GENERATOR = 26.0
SETS = (
    ("med train", "med", "train", None),
    ("hard train", "hard", "train", None),
    ("med test op15", "med", "test", 15),
    ("med test op20", "med", "test", 20),
)


def calibration() -> float:
    """Seconds for a fixed pure-Python workload (dicts, strings, random): the machine's speed now."""
    rng = random.Random(0)
    start = time.perf_counter()
    acc = {}
    for i in range(300_000):
        acc[f"k{i % 977}"] = acc.get(f"k{i % 977}", 0) + int(rng.random() * 23)
    return time.perf_counter() - start


def single_process(preset: str, split: str, op, n: int) -> tuple[float, float, float]:
    cfg = PRESETS[preset]
    gen = Generator(cfg)
    rng = random.Random(1)
    gen.make(rng, 5, split if op is None else split)  # warm caches
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        gen.make(rng, op if op is not None else light_op(rng, cfg.max_op), split)
    gen_rate = n / (time.perf_counter() - start)
    cpu_rate = n / (time.process_time() - cpu)
    ds._STATE.update(generator=Generator(cfg, gen.lexicon), tokenizer=IgsmTokenizer.from_lexicon(gen.lexicon), op=op, split=split, seed=1)
    start = time.perf_counter()
    done = 0
    chunk = 0
    while done < n:
        count = min(ds.CHUNK, n - done)
        ds._generate_chunk((chunk, count))
        done += count
        chunk += 1
    tok_rate = n / (time.perf_counter() - start)
    ds._STATE.clear()
    return gen_rate, cpu_rate, tok_rate


def all_cores(preset: str, split: str, op, n: int, workers: int, tmp: Path) -> tuple[float, dict]:
    out = tmp / f"{preset}_{split}_{op}"
    start = time.perf_counter()
    ds.generate_dataset(PRESETS[preset], split, n, 0, out, workers=workers, op=op, progress=False)
    rate = n / (time.perf_counter() - start)
    meta = json.loads((out / "meta.json").read_text())
    shutil.rmtree(out)
    return rate, meta


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000, help="problems per set and measurement")
    ap.add_argument("--full", action="store_true", help="also write the 500,000-problem med train set")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    workers = args.workers or len(os.sched_getaffinity(0))
    cal = calibration()
    print(f"cores: {workers}; load average: {os.getloadavg()[0]:.1f}; calibration loop: {cal:.3f} s")
    print(f"{'set':<15} {'gen/s':>8} {'gen/cpu-s':>9} {'+tok/s':>8} {'all/s':>8} {'gen/target':>10} {'gen/ref':>8} {'gen*cal':>8}   tokens mean / p99 / max")
    tmp = Path(tempfile.mkdtemp(prefix="bench_igsm_"))
    try:
        for name, preset, split, op in SETS:
            gen_rate, cpu_rate, tok_rate = single_process(preset, split, op, args.n)
            all_rate, meta = all_cores(preset, split, op, 2 * args.n, workers, tmp)
            tl = meta["token_length"]
            print(
                f"{name:<15} {gen_rate:8.0f} {cpu_rate:9.0f} {tok_rate:8.0f} {all_rate:8.0f} {gen_rate / TARGET:10.2f} {gen_rate / REFERENCE_GENERATOR:8.0f}"
                f" {gen_rate * cal:8.0f}   {tl['mean']:.0f} / {tl['p99']} / {tl['max']}",
                flush=True,
            )
        if args.full:
            start = time.perf_counter()
            rate, meta = all_cores("med", "train", None, 500_000, workers, tmp)
            minutes = (time.perf_counter() - start) / 60
            children = os.times().children_user + os.times().children_system
            tl = meta["token_length"]
            print(f"500K med train, tokenized and written with {workers} workers: {minutes:.2f} min ({rate:.0f}/s, target < 5 min: {'met' if minutes < 5 else 'MISSED'}); "
                  f"tokens mean {tl['mean']:.0f} p99 {tl['p99']} max {tl['max']}; {meta['n_tokens']:,} tokens; "
                  f"worker CPU {children:.0f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
