"""Runs a pipeline stage (`python -m vld.pipeline.<stage>` arguments) that dies with os._exit(17),
no clean-up, right after optimizer step N (VLD_TEST_EXIT_AFTER_STEP=N): a killed stage.

    python tests/scripts/stage_exit_after_step.py pretrain --family khop --variant base
"""

from __future__ import annotations

import os
import runpy
import sys

import vld.train.run as run
from exit_after_step import ExitAfterStep  # beside this script


if __name__ == "__main__":
    original = run.build_trainer

    def build_trainer(cfg, out_dir, logger=None, callbacks=(), **kwargs):
        step = int(os.environ["VLD_TEST_EXIT_AFTER_STEP"])
        return original(cfg, out_dir, logger=logger, callbacks=[*callbacks, ExitAfterStep(step)], **kwargs)

    run.build_trainer = build_trainer
    stage = sys.argv[1]
    sys.argv = [f"vld.pipeline.{stage}", *sys.argv[2:]]
    runpy.run_module(f"vld.pipeline.{stage}", run_name="__main__")
