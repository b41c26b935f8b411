"""A Lightning callback that kills its process (os._exit(17), no clean-up) right after
optimizer step N: a killed job, for the resume tests' scripts."""

from __future__ import annotations

import os

import lightning as L


class ExitAfterStep(L.Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step >= self.step:
            os._exit(17)
