"""Running a module in eval mode for a while (no torch import)."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def eval_mode(model):
    """`model` (any nn.Module) in eval mode inside the block, its own mode restored after,
    also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


__all__ = ["eval_mode"]
