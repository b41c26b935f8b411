"""A variant's `recipe:` block: the training recipes for looped models (docs/recipes.md).

    recipe: {inject: adapter, residual_scale: visits, loop_sampling: poisson, loop_curriculum: 0.5,
             lr_scale: inverse_sqrt}

Every option is off when absent, and a variant without the block is exactly what it was. The
model's options (inject, residual_scale) are ModelConfig's, checked there; the count per step
(loop_sampling, loop_curriculum) is vld.train.loops'; lr_scale rewrites the variant's peak
learning rate (vld.train.loops.lr_for_repeats). Torch-free: the validator reads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from vld.declared import check_keys
from vld.errors import fail
from vld.train.loops import COMPILES_PER_COUNT, LR_SCALES, SAMPLINGS, LoopTraining, lr_for_repeats

if TYPE_CHECKING:
    from vld.model.config import ModelConfig
    from vld.train.config import TrainConfig

# options that need a looped schedule (pattern cycle, on the whole model or on `layers: a..b`)
_LOOPED = ("inject", "loop_sampling", "loop_curriculum", "lr_scale")


@dataclass(frozen=True)
class Recipe:
    inject: str | None = None  # ModelConfig.inject
    residual_scale: str | None = None  # ModelConfig.residual_scale
    loop_sampling: str = "fixed"  # vld.train.loops.SAMPLINGS
    loop_curriculum: float = 0.0  # fraction of training over which the count ramps up
    lr_scale: str | None = None  # vld.train.loops.LR_SCALES

    @classmethod
    def from_dict(cls, raw: Any, where: str = "recipe") -> "Recipe | None":
        """The block as written; None when absent or empty (no recipe)."""
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            fail(where, f"must be a mapping of recipe options ({', '.join(f.name for f in dataclasses.fields(cls))})")
        check_keys(raw, cls, where, sort=True)
        if not raw:
            return None
        recipe = cls(**raw)
        if recipe.loop_sampling not in SAMPLINGS:
            fail(f"{where}.loop_sampling", f"must be one of {', '.join(SAMPLINGS)}, got {recipe.loop_sampling!r}")
        curriculum = recipe.loop_curriculum
        if isinstance(curriculum, bool) or not isinstance(curriculum, (int, float)) or not 0 <= curriculum <= 1:
            fail(f"{where}.loop_curriculum", f"must be a fraction of training in [0, 1], got {curriculum!r}")
        if recipe.lr_scale is not None and recipe.lr_scale not in LR_SCALES:
            fail(f"{where}.lr_scale", f"must be one of {', '.join(LR_SCALES)}, got {recipe.lr_scale!r}")
        return dataclasses.replace(recipe, loop_curriculum=float(curriculum))

    def to_dict(self) -> dict[str, Any]:
        """The options set (those differing from off), as recorded in results and fingerprints."""
        default = Recipe()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    def label(self) -> str:
        """A short name for tables: "inject=adapter, lr_scale=inverse_sqrt" ("plain" when all are off)."""
        return ", ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                         for key, value in self.to_dict().items()) or "plain"

    def apply(self, model: "ModelConfig", train: "TrainConfig", layers: str | None,
              where: str) -> tuple["ModelConfig", "TrainConfig", LoopTraining | None]:
        """The variant's model and training with the recipe, and its count per step (None: the
        nominal count at every step). `model` carries the resolved schedule, `layers` the
        schedule's `layers:` (the looped core). One line naming the option when the schedule
        has no loop to apply it to."""
        from vld.model.schedule import core_range, loop_layout

        order = model.schedule if model.schedule is not None else list(range(model.n_layer))
        core = None if layers is None else list(core_range(layers, model.n_layer, f"{where}.layers"))
        repeats = 1
        needs_loop = [key for key in _LOOPED if getattr(self, key) != getattr(Recipe(), key)]
        if needs_loop:
            repeats = loop_layout(order, model.n_layer, core, f"{where}.recipe.{needs_loop[0]}")[2]
        model = dataclasses.replace(model, inject=self.inject, residual_scale=self.residual_scale,
                                    loop_core=core if self.inject is not None else None)
        model.validate(f"{where}.recipe")
        if self.lr_scale is not None:
            optim = dataclasses.replace(train.optim, lr=lr_for_repeats(train.optim.lr, self.lr_scale, repeats))
            train = dataclasses.replace(train, optim=optim)
        loops = LoopTraining(model.n_layer, None if core is None else tuple(core), repeats, self.loop_sampling,
                             self.loop_curriculum)
        if loops.varies and train.compile:
            key = "loop_sampling" if self.loop_sampling != "fixed" else "loop_curriculum"
            fail(f"{where}.recipe.{key}", f"{getattr(self, key)!r} varies the loop count between steps, and "
                 f"{COMPILES_PER_COUNT}: not with compile: true (hardware or train block)")
        return model, train, (loops if loops.varies else None)


__all__ = ["Recipe"]
