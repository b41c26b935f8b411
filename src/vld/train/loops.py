"""How many times a looped model runs its core at each training step (loop-count sampling and
the loop curriculum of docs/recipes.md), and the learning-rate rule for repeats.

    loops = LoopTraining(n_layer=2, core=None, repeats=3, sampling="poisson", curriculum=0.5)
    order = loops.schedule(loops.repeats_at(seed, step, max_steps))   # the step's schedule

The count is a pure function of (seed, step, max_steps): a resumed run draws what an
uninterrupted one drew. Torch-free: the validator builds these.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from vld.model.schedule import looped_schedule

SAMPLINGS = ("fixed", "poisson", "uniform")
LR_SCALES = ("inverse_sqrt",)
POISSON_CAP = 3  # a Poisson draw is capped at this many times the mean (mean shifts by < 1e-3 for means >= 2)
_SALT = 0x1007  # keeps this stream apart from others drawn from the same seed


def lr_for_repeats(lr: float, rule: str, repeats: int) -> float:
    """The peak learning rate for a core run `repeats` times: "inverse_sqrt" is lr / sqrt(repeats)
    (one repeat: unchanged), the scaling a looped nanochat run's halved optimum at 4 loops suggests
    (docs/recipes.md)."""
    if rule != "inverse_sqrt":
        raise ValueError(f"unknown lr rule {rule!r}")
    return lr / math.sqrt(repeats)


@dataclass(frozen=True)
class LoopTraining:
    """n_layer and core ((a, b), None: every layer) place the loop (vld.model.schedule.loop_layout);
    repeats: the nominal count (what evaluation runs); sampling: "fixed" (always the mean),
    "poisson" (1 + Poisson(mean - 1), capped at POISSON_CAP x mean) or "uniform" (uniform on
    1 .. 2 mean - 1): each with the step's mean as its mean; curriculum: the fraction of training
    over which the mean ramps from 1 to `repeats` (0: none)."""

    n_layer: int
    core: tuple[int, int] | None
    repeats: int
    sampling: str = "fixed"
    curriculum: float = 0.0

    def mean_at(self, step: int, max_steps: int) -> int:
        """The curriculum's count at optimizer step `step` (0-based): 1, 2, ..., repeats, each for
        an equal share of the first `curriculum` x max_steps steps, then `repeats`."""
        ramp = self.curriculum * max_steps
        if ramp <= 0 or step >= ramp:
            return self.repeats
        return min(self.repeats, 1 + int(self.repeats * step / ramp))

    def repeats_at(self, seed: int, step: int, max_steps: int) -> int:
        mean = self.mean_at(step, max_steps)
        if self.sampling == "fixed" or mean == 1:
            return mean
        rng = np.random.default_rng([_SALT, int(seed), int(step)])
        if self.sampling == "poisson":
            return int(min(POISSON_CAP * mean, 1 + rng.poisson(mean - 1)))
        return int(rng.integers(1, 2 * mean))  # uniform on 1 .. 2 mean - 1

    def schedule(self, repeats: int) -> list[int]:
        return looped_schedule(self.n_layer, self.core, repeats)

    @property
    def varies(self) -> bool:
        """Whether training ever runs another count than the nominal one."""
        return self.repeats > 1 and (self.sampling != "fixed" or self.curriculum > 0)

    def to_dict(self) -> dict:
        return asdict(self)


# Why a count that varies between steps is refused with torch.compile (where the recipe is read,
# and by LMModule.compile_training for callers of the API)
COMPILES_PER_COUNT = "each count would compile a graph of its own"

__all__ = ["COMPILES_PER_COUNT", "LR_SCALES", "LoopTraining", "POISSON_CAP", "SAMPLINGS", "lr_for_repeats"]
