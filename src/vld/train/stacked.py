"""Seeds of one variant trained together (placeholder: one after another)."""

from __future__ import annotations

from pathlib import Path

from vld.train.run import run_training


def train_seeds(models, datamodules, cfgs, out_dir: Path, logger=None) -> list[dict]:
    if len(models) == 1:
        return [run_training(models[0], datamodules[0], cfgs[0], out_dir, logger=logger)]
    return [run_training(model, dm, cfg, Path(out_dir) / f"seed{cfg.seed}")
            for model, dm, cfg in zip(models, datamodules, cfgs)]
