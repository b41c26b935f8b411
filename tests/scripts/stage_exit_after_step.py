"""Runs a pipeline stage (`python -m vld.pipeline.<stage>` arguments) that dies with os._exit(17),
no clean-up, right after optimizer step N (VLD_TEST_EXIT_AFTER_STEP=N): a killed stage.

    python tests/scripts/stage_exit_after_step.py pretrain --family khop --variant base
"""

from __future__ import annotations

import os
import runpy
import sys

import lightning as L

import vld.train.run as run


class ExitAfterStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os._exit(17)


if __name__ == "__main__":
    original = run.build_trainer

    def build_trainer(cfg, out_dir, logger=None, callbacks=(), **kwargs):
        step = int(os.environ["VLD_TEST_EXIT_AFTER_STEP"])
        return original(cfg, out_dir, logger=logger, callbacks=[*callbacks, ExitAfterStep(step)], **kwargs)

    run.build_trainer = build_trainer
    stage = sys.argv[1]
    sys.argv = [f"vld.pipeline.{stage}", *sys.argv[2:]]
    runpy.run_module(f"vld.pipeline.{stage}", run_name="__main__")
