"""The Lightning logger of a stage's child run (its own module: it imports lightning, which
only training stages need; a class at module level so that it pickles by name, ddp_spawn)."""

from __future__ import annotations

from lightning.pytorch.loggers import MLFlowLogger


class StageLogger(MLFlowLogger):
    """Lightning's MLFlowLogger that leaves the run's end to the stage: Lightning would mark
    the run FINISHED when training ends, while the stage still has its outputs to write."""

    def finalize(self, status: str = "success") -> None:
        return None
