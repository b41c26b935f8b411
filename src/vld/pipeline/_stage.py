"""What every stage shares: where outputs live, argument parsing, ranks, work directories.

Paths are relative to the repository root, where DVC runs every stage; dvc.yaml declares the
same paths as outs, so the two must change together.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
from pathlib import Path
from typing import Any

from vld.errors import fail
from vld.pipeline.params import FAMILIES, config_hash
# The tracking helpers live in vld.pipeline.tracking; these names stay here for the stages
# that still import them from _stage.
from vld.pipeline.tracking import NullRun, is_global_zero, tracked

IGSM_TRAIN = Path("data/igsm/train")
IGSM_TESTS = Path("data/igsm/tests")
KNOWLEDGE_DATA = Path("data/knowledge")
PRETRAIN = Path("results/pretrain")
RETROFIT = Path("results/retrofit")
EVAL = Path("results/eval")
REPORT = Path("results/report")
# Checkpoints of running trainings. DVC deletes a stage's outputs before running it, so a
# killed training resumes from here; the directory name is a hash of everything that
# determines the run, so a changed config never resumes a stale checkpoint.
WORK = Path(".vld-work")


def knowledge_dir(name: str) -> Path:
    return KNOWLEDGE_DATA / name


def pretrain_dir(family: str, variant: str) -> Path:
    return PRETRAIN / family / variant


def retrofit_dir(variant: str) -> Path:
    return RETROFIT / variant


def eval_file(family: str, variant: str) -> Path:
    return EVAL / family / f"{variant}.json"


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


def drop_work_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def data_sha256(path: str | Path) -> str:
    """The content hash a token set records in its meta.json."""
    meta = Path(path) / "meta.json"
    try:
        return str(json.loads(meta.read_text()).get("tokens_sha256", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def data_tags(dirs: dict[str, str | Path]) -> dict[str, str]:
    return {f"vld.data.{name}.sha256": data_sha256(path) for name, path in dirs.items()}


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


__all__ = ["FAMILIES", "NullRun", "is_global_zero", "tracked"]
