"""What a validated params.yaml holds: its variants (`Variant`) and the settings the families
read (`Plan`: data sets, models, variants). vld.pipeline.params builds them; the families
(vld.pipeline.families) and the stages read them. Neither of those two modules imports the
other: both import this one, which imports neither.

Torch-free: the validator imports this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from vld.errors import fail

if TYPE_CHECKING:
    from vld.model.config import ModelConfig
    from vld.train.config import TrainConfig
    from vld.train.loops import LoopTraining
    from vld.train.recipe import Recipe

# The fields only some families' variants have (None elsewhere), in the order they are recorded.
FAMILY_FIELDS = ("data", "source", "method", "lora_rank", "objective")


@dataclass
class Variant:
    """One validated variant of a family: typed configs the stages use as they are."""

    family: str
    name: str
    model_name: str  # the models: key (retrofit: the source's model)
    model: ModelConfig  # with the schedule; vocab_size set where params.yaml decides it
    pattern: str
    k: int
    layers: str | None
    train: TrainConfig  # hardware + family train block + variant overrides + seed
    eval: dict  # the family's eval settings, validated by vld.eval.variant
    seed: int
    data: str | None = None  # knowledge, khop: dataset name under data.<section>
    source: str | None = None  # retrofit families: the variant of their source family it starts from
    method: str | None = None
    lora_rank: int | None = None
    objective: str | None = None  # iGSM families: what the loss is on (vld.data.igsm.objectives)
    seeds: tuple[int, ...] = (0,)  # every seed of the variant; `seed` is the one this view stands for
    recipe: Recipe | None = None  # the loop recipes (vld.train.recipe), applied to model and train
    loops: LoopTraining | None = None  # the core's count per training step, when it varies

    def for_seed(self, seed: int) -> "Variant":
        """This variant as trained with `seed` (one of its seeds)."""
        if seed not in self.seeds:
            fail(f"{self.key}.seeds", f"has no seed {seed} (seeds: {list(self.seeds)})")
        return dataclasses.replace(self, seed=seed, train=dataclasses.replace(self.train, seed=seed))

    def per_seed(self) -> list["Variant"]:
        return [self.for_seed(seed) for seed in self.seeds]

    @property
    def schedule(self) -> list[int]:
        return list(self.model.schedule)

    @property
    def effective_depth(self) -> int:
        return len(self.model.schedule)

    @property
    def key(self) -> str:
        return f"{self.family}.variants.{self.name}"

    @property
    def schedule_spec(self) -> dict:
        spec = {"pattern": self.pattern, "k": self.k}
        if self.layers is not None:
            spec["layers"] = self.layers
        return spec

    def test_time_schedules(self) -> tuple[int, dict[int, list[int]]] | None:
        """(trained count, {count: schedule}) for test-time depth: the core of a looped schedule
        (pattern cycle; vld.model.schedule.loop_layout) run 1 .. 2(k+1)+1 times on the whole model
        (cycle x0 .. x2(k+1)), 1 .. 4(k+1) times on `layers: a..b` (a prelude / core / coda
        model). None for the base pattern and schedules without such a loop."""
        from vld.errors import UserError
        from vld.model.schedule import core_range, loop_layout, looped_schedule

        if self.pattern == "base":
            return None
        n_layer = self.model.n_layer
        core = None if self.layers is None else core_range(self.layers, n_layer)
        try:
            repeats = loop_layout(self.schedule, n_layer, core)[2]
        except UserError:
            return None
        most = 2 * repeats + 1 if core is None else 4 * repeats
        return repeats, {r: looped_schedule(n_layer, core, r) for r in range(1, most + 1)}

    def model_config(self, vocab_size: int | None = None) -> ModelConfig:
        """The model's config with the data's vocabulary (when the data files decide it)."""
        return self.model if vocab_size is None else dataclasses.replace(self.model, vocab_size=int(vocab_size))

    def family_fields(self) -> dict[str, Any]:
        """The FAMILY_FIELDS this variant has (not None)."""
        return {key: getattr(self, key) for key in FAMILY_FIELDS if getattr(self, key) is not None}

    def recipe_fields(self) -> dict[str, Any]:
        """The recipe options set, {} without a recipe."""
        return self.recipe.to_dict() if self.recipe is not None else {}

    @property
    def recipe_label(self) -> str | None:
        return self.recipe.label() if self.recipe is not None else None

    def tags(self) -> dict[str, Any]:
        """MLflow tags of every stage of this variant (the LoRA rank is a param, not a tag)."""
        tags = {"vld.family": self.family, "vld.pattern": self.pattern, "vld.k": self.k,
                "vld.effective_depth": self.effective_depth, "vld.model": self.model_name,
                "vld.seed": self.seed, "vld.seeds": len(self.seeds)}
        tags.update({f"vld.{key}": value for key, value in self.family_fields().items() if key != "lora_rank"})
        if self.recipe is not None:
            tags["vld.recipe"] = self.recipe_label
        return tags

    def to_dict(self) -> dict:
        out = {key: getattr(self, key) for key in ("family", "name", "model_name", "pattern", "k", "layers", "seed")}
        # every family field, None included, but the objective only where set: only iGSM variants
        # have one, and the other fingerprints stay as they were before it existed
        out.update({key: getattr(self, key) for key in FAMILY_FIELDS
                    if key != "objective" or self.objective is not None})
        # all seeds: a seed trained stacked beside others is computed with them (vld.train.stacked)
        out.update(seeds=list(self.seeds), schedule=self.schedule, effective_depth=self.effective_depth, eval=self.eval,
                   model=self.model.to_dict(), train=self.train.to_dict())
        if self.recipe is not None:  # only where set: the fingerprints of variants without one stay
            out["recipe"] = self.recipe_fields()
        return out

    def fingerprint(self) -> str:
        """sha256 of everything that decides this variant's result (its resolved configs):
        stages record it, and the stages after them check it against params.yaml as it is now."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()

    def flat_params(self) -> dict[str, Any]:
        """Flattened for MLflow params."""
        out = {"family": self.family, "variant": self.name, "model": self.model_name,
               "pattern": self.pattern, "k": self.k, "layers": self.layers,
               "effective_depth": self.effective_depth, "schedule": ",".join(map(str, self.schedule)),
               "seed": self.seed, "seeds": ",".join(map(str, self.seeds)), **self.family_fields()}
        model = {k: v for k, v in self.model.to_dict().items() if k not in ("schedule", "vocab_size")}
        out.update(_flatten(model, "model"))
        out.update(_flatten(self.train.to_dict(), "train"))
        out.update(_flatten(self.recipe_fields(), "recipe"))
        return out


@dataclass
class Plan:
    """The settings of params.yaml that the families read: data sets, models and the variants
    validated so far (vld.pipeline.params.Pipeline is this plus the file it came from)."""

    data: dict[str, Any] = field(default_factory=dict)  # igsm: IgsmData; knowledge, khop: {name: spec}
    models: dict[str, ModelConfig] = field(default_factory=dict)  # name -> config (placeholder vocabulary)
    variants: dict[str, dict[str, Variant]] = field(default_factory=dict)


def _flatten(d: Mapping, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))
        else:
            out[name] = value
    return out
