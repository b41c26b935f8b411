"""The golden loss: a fixed tiny training run whose first losses on CPU are recorded in
tests/golden/loss_tiny.json (checked by tests/test_golden_loss.py), so that a refactor that
changes numerics is caught.

    python tests/golden_loss.py            # compare with the recorded file (exit 1 if different)
    python tests/golden_loss.py --write    # re-record it, deliberately

The tiny setting (data, model, config) also serves the training tests and their subprocess
launcher (tests/scripts/train_script.py), so that all of them exercise the same path.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

from vld.errors import fail, run_cli

GOLDEN_FILE = Path(__file__).resolve().parent / "golden" / "loss_tiny.json"
TOLERANCE = 1e-6  # relative; the recorded values are float32 losses printed in full

TINY_MODEL = dict(vocab_size=64, n_layer=2, d_model=32, n_head=2, max_seq_len=32, block="gpt2")
TINY_TRAIN = dict(
    max_steps=10,
    global_batch_size=8,
    micro_batch_size=4,
    seq_len=32,
    seed=0,
    threads=1,  # one thread: the same reduction order whatever the machine's core count
    optim=dict(lr=5e-3, warmup_fraction=0.1),
)
TINY_DATA_TOKENS = 16_384


def write_tiny_token_set(out_dir: str | Path, n_tokens: int = TINY_DATA_TOKENS, vocab_size: int = 64, seed: int = 0) -> Path:
    """A learnable synthetic token set: a sparse random Markov chain (each token has 3
    possible successors), so losses fall quickly below log(vocab)."""
    import numpy as np

    from vld.data.tokens import write_token_set

    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab_size, size=(vocab_size, 3))
    choices = rng.integers(0, 3, size=n_tokens)
    tokens = np.empty(n_tokens, dtype=np.int64)
    tokens[0] = 0
    for i in range(1, n_tokens):
        tokens[i] = successors[tokens[i - 1], choices[i]]
    return write_token_set(out_dir, tokens, np.array([0, n_tokens]), vocab_size, {"generator": "tests/golden_loss.py", "seed": seed})


def tiny_model(seed: int = 0, backend=None, **overrides: Any):
    """The tiny VLDTransformer, initialised from `seed` (independent of the global RNG state);
    `overrides`: ModelConfig fields, `backend`: a vld.model.Backend (default: the default)."""
    import torch

    from vld.model import ModelConfig, VLDTransformer

    config = ModelConfig(**{**TINY_MODEL, **overrides})
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return VLDTransformer(config, backend=backend)
    finally:
        torch.random.set_rng_state(state)


def tiny_train_config(**overrides: Any):
    from vld.train.config import TrainConfig

    d = json.loads(json.dumps(TINY_TRAIN))
    optim = {**d.pop("optim"), **overrides.pop("optim", {})}
    return TrainConfig.from_dict({**d, **overrides, "optim": optim}, where="golden")


def golden_losses(work_dir: str | Path, cpu_gemm: str = "auto") -> list[float]:
    """Run the tiny training from scratch in `work_dir` and return its loss curve; the model
    runs with the config's backend, as in a pipeline stage (`cpu_gemm`: hardware.cpu_gemm)."""
    import torch

    from vld.train.datamodules import TokenWindowDataModule
    from vld.train.run import run_training

    work_dir = Path(work_dir)
    cfg = tiny_train_config(cpu_gemm=cpu_gemm)
    data = write_tiny_token_set(work_dir / "data")
    threads = torch.get_num_threads()
    try:
        metrics = run_training(
            tiny_model(seed=0, backend=cfg.backend),
            TokenWindowDataModule(data, cfg.seq_len, cfg.micro_batch_size, seed=cfg.seed),
            cfg,
            work_dir / "run",
        )
    finally:
        torch.set_num_threads(threads)  # run_training set the config's count; the caller keeps its own
    return metrics["loss_curve"]


def record(path: Path = GOLDEN_FILE) -> dict[str, Any]:
    import torch

    from vld.atomic import write_json

    with tempfile.TemporaryDirectory() as tmp:
        losses = golden_losses(tmp)
    golden = {
        "what": "loss per optimizer step of tests/golden_loss.py's tiny run on CPU (float32)",
        "re-record": "python tests/golden_loss.py --write",
        "torch": torch.__version__,
        "model": TINY_MODEL,
        "train": TINY_TRAIN,
        "data_tokens": TINY_DATA_TOKENS,
        "losses": losses,
    }
    write_json(path, golden)
    return golden


def compare(losses: list[float], golden: dict[str, Any]) -> list[str]:
    """Differences between a loss curve and the recorded one (empty when they agree)."""
    expected = golden["losses"]
    if len(losses) != len(expected):
        return [f"{len(losses)} losses, the golden file has {len(expected)}"]
    return [
        f"step {i + 1}: {got!r} != {want!r}"
        for i, (got, want) in enumerate(zip(losses, expected))
        if not math.isclose(got, want, rel_tol=TOLERANCE, abs_tol=0.0)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/golden_loss.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="re-record the golden file")
    parser.add_argument("--file", type=Path, default=GOLDEN_FILE, help="golden file (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.write:
        golden = record(args.file)
        print(f"wrote {args.file}: {golden['losses']}")
        return 0
    if not args.file.is_file():
        fail(str(args.file), "no golden file; record one with --write")
    golden = json.loads(args.file.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        diffs = compare(golden_losses(tmp), golden)
    for line in diffs:
        print(line, file=sys.stderr)
    print("golden loss: " + ("DIFFERENT" if diffs else "same"))
    return 1 if diffs else 0


if __name__ == "__main__":
    run_cli(main)
