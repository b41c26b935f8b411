"""What every stage shares: argument parsing, the device, work directories for resumable
trainings, data hashes for tags, and the start of a data stage. Where outputs live is
vld.pipeline.paths; MLflow (and the rank-zero check) is vld.pipeline.tracking."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from vld.errors import fail
from vld.pipeline.paths import WORK

STARTED = time.time()  # every stage imports this module first thing: the stage's start

def summary(key: str, out: str | Path, seeds: int | None = None, headline: str | None = None,
            values: list[float] | tuple[float, ...] = ()) -> None:
    """The stage's closing line: what it wrote, its headline metric (one value per seed), its time:
    `vld: pretrain_khop@cycle_x1: 2 seeds -> results/pretrain/khop/cycle_x1 (final loss 0.41 / 0.39) in 12 s`."""
    line = f"vld: {key}"
    if seeds is not None:
        line += f": {seeds} seed{'' if seeds == 1 else 's'}"
    line += f" -> {out}"
    shown = [f"{v:.3g}" for v in values if isinstance(v, (int, float))]
    if headline and shown:
        line += f" ({headline} {' / '.join(shown)})"
    print(f"{line} in {time.time() - STARTED:.0f} s", flush=True)


def offline() -> None:
    """Nothing downloaded: Hugging Face's libraries read only local files and caches (set before
    they are imported: they read these once)."""
    import os

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[name] = "1"


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able config (names work directories)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def parser(prog: str, description: str, families: tuple[str, ...] | None = None,
           variant: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"python -m vld.pipeline.{prog}", description=description)
    if families:
        parser.add_argument("--family", required=True, choices=families)
    if variant:
        parser.add_argument("--variant", required=True, help="variant name in params.yaml")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    return parser


def stage_device(train_cfg) -> str:
    """Where a stage computes, from params.yaml's hardware block: "cuda" when it asks for a GPU
    (or says auto and one is visible), else "cpu". A GPU asked for on a machine without one
    stops the stage here, in one line, before any work."""
    from vld.train.config import check_devices

    check_devices(train_cfg, "hardware")
    if train_cfg.accelerator in ("gpu", "cuda"):
        return "cuda"
    if train_cfg.accelerator == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def work_dir(stage: str, variant: str, determinants: Any) -> Path:
    """The checkpoint directory of a run (checked writable now, before any compute)."""
    from vld.atomic import check_writable

    path = WORK / stage / f"{variant}-{config_hash(determinants)}"
    check_writable(path / "checkpoints" / "last.ckpt")
    try:
        WORK.mkdir(parents=True, exist_ok=True)
        ignore = WORK / ".gitignore"
        if not ignore.exists():
            ignore.write_text("*\n")
    except OSError as err:
        fail(str(WORK), f"cannot be written ({err.strerror or err})")
    return path


def dataset_stage(prog: str, description: str, section: str, argv) -> tuple:
    """A data stage's start: `--dataset NAME` of data.<section>, with the whole params.yaml
    validated first; returns (args, pipeline, spec)."""
    from vld.pipeline.params import load_pipeline

    cli = parser(prog, description, variant=False)
    cli.add_argument("--dataset", required=True, help=f"dataset name under data.{section}")
    args = cli.parse_args(argv)
    pipeline = load_pipeline(args.params)
    datasets = pipeline.data[section]
    if args.dataset not in datasets:
        fail("--dataset", f"no dataset {args.dataset!r} under data.{section} (known: {', '.join(datasets) or 'none'})")
    return args, pipeline, datasets[args.dataset]


def keep_if_unchanged(pipeline, out: Path, data: tuple) -> None:
    """An output written in place is removed again when params.yaml changed while it was made
    (vld.pipeline.params.Pipeline.check_unchanged), so DVC never records it with other settings."""
    try:
        pipeline.check_unchanged(data=data)
    except Exception:
        shutil.rmtree(out, ignore_errors=True)
        raise


def drop_work_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def data_tags(dirs: dict[str, str | Path]) -> dict[str, str]:
    """MLflow tags of the token sets a stage reads: the hash each records."""
    from vld.data.tokens import recorded_sha256

    return {f"vld.data.{name}.sha256": recorded_sha256(path) for name, path in dirs.items()}


def numeric_leaves(obj: Any, prefix: str = "", depth: int = 3) -> dict[str, float]:
    """Flatten nested dicts to {'a.b.c': number} (lists are skipped) for MLflow metrics."""
    out: dict[str, float] = {}
    if isinstance(obj, dict) and depth >= 0:
        for key, value in obj.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                out[name] = float(value)
            elif isinstance(value, dict):
                out.update(numeric_leaves(value, name, depth - 1))
    return out
