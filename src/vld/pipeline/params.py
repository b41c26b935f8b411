"""Load and validate params.yaml: every user error is one line naming the key, before compute.

Every stage calls `load_pipeline()` first and so validates the WHOLE file, not only its own
part: whichever stage `dvc repro` runs first stops the pipeline on a bad file. This module
assembles; each setting is parsed by the module that owns it (vld.data.*, ModelConfig,
TrainConfig, the schedule notation, vld.eval.variant, the families of
vld.pipeline.families). Everything here is torch-free.

`python -m vld.pipeline.params [--file params.yaml]` validates and prints the variants.

Layout of params.yaml (docs/pipeline.md has the full description):

    profile: default                      # name; also the MLflow experiment
    patterns: {name: notation}            # built-ins listed verbatim + user patterns
    data: {igsm: {...}, knowledge: {NAME: {kind, ...}}, khop: {NAME: {...}}}
    models: {NAME: ModelConfig keys (or preset: NAME), vocab_size comes from the data}
    hardware: {accelerator, devices, num_nodes, strategy, precision, num_workers}
    <family>: {train: {...}, eval: {...}, variants: {NAME: VARIANT}}   for each family
    VARIANT = {model: NAME, schedule: {pattern: NAME, k: INT, layers: "a..b" | order: [...]},
               seed: INT | seeds: [INT, ...] | COUNT, train: {overrides}, + the family's own keys}

Seeds are an axis: `seeds: [0, 1, 2]` (or a count, 3 = [0, 1, 2]) on a variant, or in a family's
or a variant's train block, trains one model per seed; the most specific `seed:`/`seeds:` wins.
A Variant holds all its seeds and stands for one of them (`seed`); `per_seed()` gives each.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from vld.errors import UserError, fail, run_cli
from vld.pipeline.families import COMMON_VARIANT_KEYS, FAMILIES

PARAMS_FILE = "params.yaml"
DATA_SECTIONS = ("igsm", "knowledge", "khop")
TOP_KEYS = ("profile", "description", "patterns", "data", "models", "hardware", "report", *FAMILIES)
FAMILY_KEYS = ("train", "eval", "variants")
SCHEDULE_KEYS = ("pattern", "k", "layers", "order")
# Names become DVC stage names, dvc.yaml param keys and directory names.
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")


# ---------------------------------------------------------------------------------- loading


def load_yaml(path: str | Path = PARAMS_FILE) -> dict:
    """Read params.yaml with omegaconf (interpolations resolved) into a plain dict."""
    path = Path(path)
    if not path.is_file():
        fail(str(path), "not found (select a profile: python -m vld.pipeline.profile default)")
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        conf = OmegaConf.load(path)
        data = OmegaConf.to_container(conf, resolve=True)
    except OmegaConfBaseException as err:
        fail(str(path), f"cannot resolve: {str(err).splitlines()[0]}")
    except Exception as err:  # yaml syntax errors come from the yaml parser
        first = " ".join(str(err).split())[:300]
        fail(str(path), f"not valid YAML ({err.__class__.__name__}: {first})")
    if not isinstance(data, dict):
        fail(str(path), "must be a mapping of sections (profile, patterns, data, models, ...)")
    return data


# ------------------------------------------------------------------------------- the plan


@dataclass
class Variant:
    """One validated variant of a family: typed configs the stages use as they are."""

    family: str
    name: str
    model_name: str  # the models: key (retrofit: the source's model)
    model: Any  # ModelConfig with the schedule; vocab_size set where params.yaml decides it
    pattern: str
    k: int
    layers: str | None
    train: Any  # TrainConfig: hardware + family train block + variant overrides + seed
    eval: dict  # the family's eval settings, validated by vld.eval.variant
    seed: int
    data: str | None = None  # knowledge, khop: dataset name under data.<section>
    source: str | None = None  # retrofit: the reasoning variant it starts from
    method: str | None = None
    lora_rank: int | None = None
    objective: str | None = None  # iGSM families: what the loss is on (vld.data.igsm.objectives)
    seeds: tuple[int, ...] = (0,)  # every seed of the variant; `seed` is the one this view stands for

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

    def model_config(self, vocab_size: int | None = None):
        """The model's config with the data's vocabulary (when the data files decide it)."""
        return self.model if vocab_size is None else dataclasses.replace(self.model, vocab_size=int(vocab_size))

    def tags(self) -> dict[str, Any]:
        """MLflow tags of every stage of this variant."""
        tags = {"vld.family": self.family, "vld.pattern": self.pattern, "vld.k": self.k,
                "vld.effective_depth": self.effective_depth, "vld.model": self.model_name,
                "vld.seed": self.seed, "vld.seeds": len(self.seeds)}
        tags.update({f"vld.{key}": getattr(self, key) for key in ("data", "source", "method", "objective")
                     if getattr(self, key) is not None})
        return tags

    def to_dict(self) -> dict:
        out = {key: getattr(self, key) for key in ("family", "name", "model_name", "pattern", "k", "layers",
                                                    "seed", "data", "source", "method", "lora_rank")}
        if self.objective is not None:  # only iGSM variants have one; other fingerprints stay as they were
            out["objective"] = self.objective
        # all seeds: a seed trained stacked beside others is computed with them (vld.train.stacked)
        out.update(seeds=list(self.seeds), schedule=self.schedule, effective_depth=self.effective_depth, eval=self.eval,
                   model=self.model.to_dict(), train=self.train.to_dict())
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
               "seed": self.seed, "seeds": ",".join(map(str, self.seeds))}
        for key in ("data", "source", "method", "lora_rank", "objective"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        model = {k: v for k, v in self.model.to_dict().items() if k not in ("schedule", "vocab_size")}
        out.update(_flatten(model, "model"))
        out.update(_flatten(self.train.to_dict(), "train"))
        return out


@dataclass
class Pipeline:
    """params.yaml, validated."""

    raw: dict
    path: Path
    profile: str
    patterns: dict[str, str]  # user patterns only (built-ins are known to vld.model.schedule)
    data: dict[str, Any] = field(default_factory=dict)  # igsm: IgsmData | None; knowledge, khop: {name: spec}
    models: dict[str, Any] = field(default_factory=dict)  # name -> ModelConfig (placeholder vocabulary)
    variants: dict[str, dict[str, Variant]] = field(default_factory=dict)

    def check_unchanged(self, variant: Variant | None = None, data: tuple[str, str] | None = None) -> None:
        """Before a stage writes its outputs: params.yaml must still say what the stage ran with
        (an edit while it ran would make DVC record settings it did not use). One line if not."""
        try:
            now = load_pipeline(self.path)
        except UserError as err:
            fail(str(self.path), f"changed while this stage ran and is no longer valid ({err}); nothing was written")
        if variant is not None:
            current = now.variants.get(variant.family, {}).get(variant.name)
            if current is None or variant.seed not in current.seeds or \
                    current.for_seed(variant.seed).fingerprint() != variant.fingerprint():
                fail(variant.key, f"changed in {self.path} while this stage ran; nothing was written"
                     " (run dvc repro again)")
        if data is not None:
            section, name = data
            before, after = self.data[section], now.data[section]
            if name is not None:
                before, after = before.get(name), after.get(name)
            if before != after:
                fail(f"data.{section}" + (f".{name}" if name else ""), f"changed in {self.path} while this stage ran;"
                     " nothing was written (run dvc repro again)")

    def variant(self, family: str, name: str) -> Variant:
        if family not in FAMILIES:
            fail("--family", f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
        table = self.variants.get(family, {})
        if name not in table:
            known = ", ".join(table) or "none"
            fail("--variant", f"{family} has no variant {name!r} in {self.path} (known: {known})")
        return table[name]


def load_pipeline(path: str | Path = PARAMS_FILE) -> Pipeline:
    """Load + validate the whole file; raises a one-line UserError on the first problem."""
    return validate(load_yaml(path), path)


# ------------------------------------------------------------------------------ validation


def _mapping(value: Any, where: str, required: bool = True) -> dict:
    if value is None and not required:
        return {}
    if not isinstance(value, Mapping):
        fail(where, f"must be a mapping, got {_show(value)}")
    return dict(value)


def _known(d: Mapping, allowed, where: str) -> None:
    for key in d:
        if key not in allowed:
            fail(f"{where}.{key}", f"unknown key (known: {', '.join(allowed)})")


def _names(table: Mapping, where: str) -> Mapping:
    for name in table:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            fail(f"{where}.{name}", f"{name!r} is not a valid name (letters, digits, _ and -, starting with a letter)")
    return table


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(value)


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


def _data(raw: Any) -> dict[str, Any]:
    """data.igsm (always: dvc.yaml runs its stages unconditionally), data.knowledge, data.khop."""
    from vld.data.igsm.sets import IgsmData
    from vld.data.khop import KHopSpec
    from vld.data.knowledge.specs import spec_from_dict

    data = _mapping(raw, "data")
    _known(data, DATA_SECTIONS, "data")
    for key in DATA_SECTIONS:
        if key not in data:
            fail(f"data.{key}", "missing section" + ("" if key == "igsm" else "; it may be empty: {}"))
    out = {"igsm": IgsmData.from_dict(data["igsm"], "data.igsm")}
    for section, parse in (("knowledge", spec_from_dict), ("khop", KHopSpec.from_dict)):
        table = _names(_mapping(data[section], f"data.{section}", required=False), f"data.{section}")
        out[section] = {name: parse(spec, f"data.{section}.{name}") for name, spec in table.items()}
    return out


def _models(raw: Any) -> dict[str, Any]:
    """Model configs, validated with a placeholder vocabulary (the data decides the real one)."""
    from vld.model.config import ModelConfig

    models = _names(_mapping(raw, "models", required=False), "models")
    out = {}
    for name, spec in models.items():
        where = f"models.{name}"
        spec = _mapping(spec, where)
        if "vocab_size" in spec:
            fail(f"{where}.vocab_size", "is set from the dataset's tokenizer; remove it")
        if "schedule" in spec:
            fail(f"{where}.schedule", "schedules belong to variants (variants.NAME.schedule), not models")
        out[name] = ModelConfig.from_dict({**spec, "vocab_size": 2}, where=where)
    return out


def _schedule(raw: Any, where: str, n_layer: int, pipeline: Pipeline, listed: Mapping) -> tuple[dict, list[int]]:
    from vld.model.schedule import resolve_schedule

    # Required, even for the base pattern: dvc.yaml reads `${item.schedule.pattern}`.
    if raw is None:
        fail(where, "missing: give {pattern: NAME, k: INT} (pattern base for no reuse)")
    spec = _mapping(raw, where)
    _known(spec, SCHEDULE_KEYS, where)
    pattern = spec.get("pattern")
    if pattern is None:
        fail(f"{where}.pattern", "missing (a name under patterns:, e.g. base or cycle; with an explicit"
             " order it names the order in the report)")
    # The pattern must be a key of `patterns:`: dvc.yaml lists `patterns.<name>` as a param
    # of every stage that uses it, so editing a pattern re-runs exactly its users.
    if not isinstance(pattern, str) or pattern not in listed:
        fail(f"{where}.pattern", f"unknown pattern {pattern!r} (define it under patterns: in params.yaml;"
             f" known: {', '.join(listed)})")
    spec.setdefault("k", 0)
    return spec, resolve_schedule(spec, n_layer, pipeline.patterns, where=where)


def _seed_list(value: Any, where: str) -> tuple[int, ...]:
    """`seeds:` as a list of distinct seeds, or a count n meaning 0 .. n-1."""
    def integer(x) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if integer(value):
        if value < 1:
            fail(where, f"a seed count must be >= 1, got {value}")
        return tuple(range(value))
    if not isinstance(value, (list, tuple)) or not value or not all(integer(x) and x >= 0 for x in value):
        fail(where, f"must be a count (3 means [0, 1, 2]) or a non-empty list of seeds >= 0, got {_show(value)}")
    if len(set(value)) != len(value):
        fail(where, f"lists a seed twice: {list(value)}")
    return tuple(value)


def _seeds(layers: list, spec: Mapping, where: str, inherited: tuple[int, ...] | None) -> tuple[tuple[int, ...], list]:
    """A variant's seeds: the most specific of its train layers and its own keys that says
    `seed` (one) or `seeds` (several) decides; else the family's default (a retrofit inherits
    its source's seeds), else seed 0. Returns the layers without `seeds` (no TrainConfig key)."""
    seeds, stripped = None, []
    for layer, at in [*layers, (spec, where)]:
        if isinstance(layer, Mapping) and "seed" in layer and "seeds" in layer:
            fail(f"{at}.seeds", "give seed (one) or seeds (several), not both")
        if isinstance(layer, Mapping) and "seeds" in layer:
            seeds = _seed_list(layer["seeds"], f"{at}.seeds")
            layer = {key: value for key, value in layer.items() if key != "seeds"}
        elif isinstance(layer, Mapping) and "seed" in layer:
            seeds = _seed_list([layer["seed"]], f"{at}.seed")
        stripped.append((layer, at))
    return seeds or inherited or (0,), stripped[:-1]


def _variant(family, name: str, spec: Any, block: dict, settings: dict, pipeline: Pipeline,
             listed: Mapping) -> Variant:
    from vld.train.config import TrainConfig

    where = f"{family.name}.variants.{name}"
    spec = _mapping(spec, where)
    _known(spec, family.variant_keys + COMMON_VARIANT_KEYS, where)
    extras = family.check_variant(spec, where, pipeline)
    model = pipeline.models[extras["model_name"]]
    schedule_spec, order = _schedule(spec.get("schedule"), f"{where}.schedule", model.n_layer, pipeline, listed)
    layers = [(pipeline.raw.get("hardware"), "hardware"), (block.get("train"), f"{family.name}.train"),
              (spec.get("train"), f"{where}.train")]
    fixed = family.fixed_train(extras, pipeline)  # settings the data decides
    for layer, at in layers[1:]:
        clash = sorted(set(fixed) & set(layer or {}))
        if clash:
            fail(f"{at}.{clash[0]}", f"is set by the data of {family.name} variants; remove it")
    seeds, layers = _seeds(layers, spec, where, family.default_seeds(extras, pipeline))
    train = TrainConfig.from_layers([*layers, ({"seed": seeds[0]}, where), (fixed, where)])
    if train.seq_len > model.max_seq_len:
        at = next((f"{w}.seq_len" for layer, w in reversed(layers) if "seq_len" in (layer or {})), where)
        if fixed.get("seq_len"):
            at = f"data.{family.name}.{extras['data']}.length"
        fail(at, f"{train.seq_len} exceeds models.{extras['model_name']}.max_seq_len {model.max_seq_len}")
    if settings.get("seq_len") is not None and settings["seq_len"] > model.max_seq_len:
        fail(f"{family.name}.eval.seq_len", f"{settings['seq_len']} exceeds models.{extras['model_name']}.max_seq_len"
             f" {model.max_seq_len}")
    variant = Variant(family=family.name, name=name, model=dataclasses.replace(model, schedule=order),
                      pattern=schedule_spec["pattern"], k=schedule_spec["k"], layers=schedule_spec.get("layers"),
                      train=train, eval=settings, seed=train.seed, seeds=seeds, **extras)
    family.check_seeds(variant, pipeline)
    vocab = family.vocab_size(variant, pipeline)
    if vocab is not None:
        variant.model = variant.model_config(vocab)
    family.check_train(variant, pipeline)
    return variant


def validate(raw: dict, path: str | Path = PARAMS_FILE) -> Pipeline:
    from vld.model.schedule import BUILTIN_PATTERNS, known_patterns

    path = Path(path)
    _known(raw, TOP_KEYS, "params")
    # dvc.yaml reads these keys (foreach and params): a missing one would be a DVC parse error.
    for key in ("profile", "patterns", "data", "models", "hardware", *FAMILIES):
        if key not in raw:
            fail(key, "missing section (every profile has it; it may be empty: {})")
    profile = raw.get("profile")
    if not isinstance(profile, str) or not _NAME_RE.match(profile):
        fail("profile", f"must be a name (letters, digits, _ and -), got {_show(profile)}")
    listed = _names(_mapping(raw.get("patterns"), "patterns", required=False), "patterns")
    user_patterns = {name: text for name, text in known_patterns(listed).items() if name not in BUILTIN_PATTERNS}
    pipeline = Pipeline(raw=raw, path=path, profile=profile, patterns=user_patterns)
    pipeline.data = _data(raw.get("data"))
    pipeline.models = _models(raw.get("models"))
    _mapping(raw.get("hardware"), "hardware", required=False)
    from vld.train.config import HARDWARE_FIELDS

    _known(raw.get("hardware") or {}, HARDWARE_FIELDS, "hardware")
    for family in FAMILIES.values():
        block = _mapping(raw.get(family.name), family.name, required=False)
        _known(block, FAMILY_KEYS, family.name)
        if "variants" not in block:
            fail(f"{family.name}.variants", "missing (it may be empty: {})")
        variants = _names(_mapping(block.get("variants"), f"{family.name}.variants", required=False),
                          f"{family.name}.variants")
        settings = {}
        if variants:  # the eval block is checked once, by the family's evaluation
            if "eval" not in block:
                fail(f"{family.name}.eval", "missing (evaluation settings; it may be empty: {})")
            settings = family.check_eval(_mapping(block["eval"], f"{family.name}.eval", required=False),
                                         f"{family.name}.eval", pipeline)
        pipeline.variants[family.name] = {name: _variant(family, name, spec, block, settings, pipeline, listed)
                                          for name, spec in variants.items()}
    _known(_mapping(raw.get("report"), "report", required=False), ("paper_numbers",), "report")
    return pipeline


# ---------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vld.pipeline.params",
                                     description="Validate params.yaml and list its variants.")
    parser.add_argument("--file", default=PARAMS_FILE, help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    pipeline = load_pipeline(args.file)
    print(f"{args.file}: profile {pipeline.profile!r}: valid")
    for family, table in pipeline.variants.items():
        for name, v in table.items():
            what = v.source and f"from {v.source}" or v.model_name
            print(f"  {family:9s} {name:18s} {what:14s} {v.pattern} k={v.k} depth {v.effective_depth}"
                  f" steps {v.train.max_steps} lr {v.train.optim.lr:g} seeds {list(v.seeds)}")
    return 0


if __name__ == "__main__":
    run_cli(main)

