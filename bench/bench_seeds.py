"""Training positions/s of N seeds trained together (one stacked model, vld.train.stacked)
against the alternatives, measured in the same run.

    .venv/bin/python bench/bench_seeds.py [--steps 200 --rounds 2 --seeds 1,2,3,4,8 --models h2,h4]
    .venv/bin/python bench/bench_seeds.py --device cuda         # the same on a GPU

For each k-hop model of params.yaml (default profile: h2, the 2-layer model; h4, the native 4
layers) on the data set its variants use and the k-hop train block, and for each N:
  sequential  N single-seed runs one after another in this process (run_training), at
              --threads threads (default: the machine's cores): the reference;
  stacked     the N seeds as one stacked model in this process (train_seeds), same threads;
  processes   N single-seed processes side by side, one thread each, released together
              (on a GPU they share it).
Each rate is all N seeds' positions (steps x global batch x sequence length) over the wall time
of the whole call (Trainer set-up included: N runs pay it N times); for processes, from the
release of the last ready process to the end of the last. The printed ratios are stacked /
sequential and processes / sequential (> 1: faster than one seed after another). --modes picks
which run (sequential is the reference of the ratios). Modes alternate within a round; the best of --rounds is kept. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = ("sequential", "stacked", "processes")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seeds", default="1,2,3,4,8", help="the seed counts N to measure")
    parser.add_argument("--models", default="h2,h4", help="k-hop models of params.yaml")
    parser.add_argument("--modes", default=",".join(MODES), help="which of sequential, stacked, processes to run")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads of the sequential and stacked runs (processes: 1 each)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--worker", type=int, metavar="SEED", help=argparse.SUPPRESS)  # one side-by-side process
    parser.add_argument("--model", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def setting(params: Path, model_name: str, steps: int, device: str, threads: int | None = None):
    """(model config, k-hop spec, train config) of the k-hop variants that use `model_name`
    (their data set and the family's train block), for `steps` steps on `threads` threads
    (default: params.yaml's hardware.threads)."""
    import yaml

    from vld.data.khop import KHopSpec
    from vld.model import ModelConfig
    from vld.train.config import TrainConfig

    raw = yaml.safe_load(params.read_text())
    data = next(v["data"] for v in raw["khop"]["variants"].values() if v.get("model") == model_name)
    spec = KHopSpec.from_dict(raw["data"]["khop"][data])
    model = ModelConfig(**raw["models"][model_name], vocab_size=spec.vocab_size)
    train = {**raw.get("hardware", {}), **raw["khop"]["train"], "max_steps": steps, "checkpoint_every": 0,
             "seq_len": spec.seq_len, "log_every": max(1, steps)}
    if threads is not None:
        train["threads"] = threads
    if device == "cuda":
        train.update(accelerator="gpu", precision="auto")
    return model, spec, TrainConfig.from_dict(train)


def seed_parts(model_cfg, spec, cfg, seed: int):
    """Seed `seed`'s model, data and config, as the pretrain stage builds them."""
    import dataclasses

    import torch

    from vld.model import VLDTransformer
    from vld.train.datamodules import KHopDataModule

    cfg = dataclasses.replace(cfg, seed=seed)
    torch.manual_seed(seed)
    model = VLDTransformer(model_cfg, backend=cfg.backend)
    return model, KHopDataModule(spec, cfg.global_batch_size, cfg.micro_batch_size, seed=seed), cfg


def positions(cfg, seeds: int) -> int:
    return seeds * cfg.max_steps * cfg.tokens_per_step


def sequential(model_cfg, spec, cfg, n: int, work: Path) -> float:
    from vld.train.run import run_training

    parts = [seed_parts(model_cfg, spec, cfg, seed) for seed in range(n)]
    start = time.perf_counter()
    for seed, (model, datamodule, seed_cfg) in enumerate(parts):
        run_training(model, datamodule, seed_cfg, work / f"seq-{seed}")
    return positions(cfg, n) / (time.perf_counter() - start)


def stacked(model_cfg, spec, cfg, n: int, work: Path) -> float:
    from vld.train.stacked import train_seeds

    parts = [seed_parts(model_cfg, spec, cfg, seed) for seed in range(n)]
    start = time.perf_counter()
    train_seeds([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts], work / "stacked")
    return positions(cfg, n) / (time.perf_counter() - start)


RUNNERS = {"sequential": sequential, "stacked": stacked}


def processes(args, model_name: str, cfg, n: int, work: Path) -> float:
    """N worker processes (one thread each); each says READY once set up, all are released
    together, each prints its finish time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, __file__, "--params", str(args.params), "--steps", str(args.steps),
           "--device", args.device, "--model", model_name]
    procs = [subprocess.Popen([*cmd, "--worker", str(seed)], cwd=work, env=env, text=True, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for seed in range(n)]
    try:
        for proc in procs:
            line = proc.stdout.readline()
            if line.strip() != "READY":
                raise RuntimeError(f"a worker failed before training: {line!r}")
        start = time.time()
        for proc in procs:
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        ends = [float(proc.stdout.readline()) for proc in procs]
    finally:
        for proc in procs:
            proc.wait()
    return positions(cfg, n) / (max(ends) - start)


def worker(args) -> None:
    protocol = os.fdopen(os.dup(1), "w")  # READY, then the finish time
    os.dup2(2, 1)  # everything else printed (the progress bar) goes to stderr
    from vld.train.run import run_training

    model_cfg, spec, cfg = setting(args.params, args.model, args.steps, args.device, threads=1)
    model, datamodule, cfg = seed_parts(model_cfg, spec, cfg, args.worker)
    print("READY", file=protocol, flush=True)
    sys.stdin.readline()
    with tempfile.TemporaryDirectory() as tmp:
        run_training(model, datamodule, cfg, Path(tmp) / "run")
    print(time.time(), file=protocol, flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return
    modes = args.modes.split(",")
    counts = [int(n) for n in args.seeds.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in args.models.split(","):
            model_cfg, spec, cfg = setting(args.params, model_name, args.steps, args.device, args.threads)
            rates = {n: {mode: [] for mode in modes} for n in counts}
            for round_ in range(args.rounds):
                for n in counts:
                    work = Path(tmp) / f"{model_name}-{n}-{round_}"
                    work.mkdir()
                    for mode in modes:
                        rates[n][mode].append(processes(args, model_name, cfg, n, work) if mode == "processes"
                                              else RUNNERS[mode](model_cfg, spec, cfg, n, work))
            table = {}
            for n in counts:
                best = {mode: max(values) for mode, values in rates[n].items()}
                table[n] = {"positions_per_s": best, **{
                    f"{mode}_over_sequential": best[mode] / best["sequential"]
                    for mode in modes if mode != "sequential" and "sequential" in modes}}
            results[model_name] = table
    print(json.dumps({"device": args.device, "threads": args.threads, "steps": args.steps, "results": results},
                     indent=1))


if __name__ == "__main__":
    main()
