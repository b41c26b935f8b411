"""Load and validate params.yaml: every user error is one line naming the key, before compute.

Every stage calls `load_pipeline()` first and so validates the WHOLE file, not only its own
part: whichever stage `dvc repro` runs first stops the pipeline on a bad file. This module
assembles; each setting is parsed by the module that owns it (vld.data.*, ModelConfig,
TrainConfig, the schedule notation, vld.eval.variant, the families of
vld.pipeline.families), and every section's keys are checked by one function
(vld.declared.check_keys). What it builds, `Variant` and the `Plan` the families read, is
vld.pipeline.plan. Everything here is torch-free.

`python -m vld.pipeline.params [--file params.yaml]` validates and prints the variants.

Layout of params.yaml (docs/pipeline.md has the full description):

    profile: default                      # name; also the MLflow experiment
    patterns: {name: notation}            # built-ins listed verbatim + user patterns
    data: {igsm: {...}, knowledge: {NAME: {kind, ...}}, khop: {NAME: {...}}, sft: {NAME: {source, files, ...}}}
    models: {NAME: ModelConfig keys (or preset: NAME), vocab_size comes from the data}
    hardware: {accelerator, devices, num_nodes, strategy, precision, num_workers}
    <family>: {train: {...}, eval: {...}, variants: {NAME: VARIANT}}   for each family
    VARIANT = {model: NAME, schedule: {pattern: NAME, k: INT, layers: "a..b" | order: [...]},
               seed: INT | seeds: [INT, ...] | COUNT, train: {overrides}, recipe: {loop recipes},
               + the family's own keys}

Seeds are an axis: `seeds: [0, 1, 2]` (or a count, 3 = [0, 1, 2]) on a variant, or in a family's
or a variant's train block, trains one model per seed; the most specific `seed:`/`seeds:` wins.
A Variant holds all its seeds and stands for one of them (`seed`); `per_seed()` gives each.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from vld.declared import check_keys
from vld.errors import UserError, fail, run_cli
from vld.pipeline.families import COMMON_VARIANT_KEYS, FAMILIES
from vld.pipeline.plan import Plan, Variant

PARAMS_FILE = "params.yaml"
DATA_SECTIONS = ("igsm", "knowledge", "khop", "sft")
TOP_KEYS = ("profile", "description", "patterns", "data", "models", "hardware", "report", *FAMILIES)
FAMILY_KEYS = ("train", "eval", "variants")
# Names become DVC stage names, dvc.yaml param keys and directory names.
_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")


# ---------------------------------------------------------------------------------- loading


def load_yaml(path: str | Path = PARAMS_FILE) -> dict:
    """Read params.yaml with omegaconf (interpolations resolved) into a plain dict."""
    path = Path(path)
    if path.is_dir():
        fail(str(path), "is a directory; expected a params file (e.g. params.yaml)")
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


@dataclass(kw_only=True)
class Pipeline(Plan):
    """params.yaml, validated: the Plan the families read, and the file it came from."""

    raw: dict
    path: Path
    profile: str
    patterns: dict[str, str]  # user patterns only (built-ins are known to vld.model.schedule)

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


def _names(table: Mapping, where: str) -> Mapping:
    for name in table:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            fail(f"{where}.{name}", f"{name!r} is not a valid name (letters, digits, _ and -, starting with a letter)")
    return table


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(value)


def _data(raw: Any) -> dict[str, Any]:
    """data.igsm (always: dvc.yaml runs its stages unconditionally), data.knowledge, data.khop, data.sft."""
    from vld.data.igsm.sets import IgsmData
    from vld.data.khop import KHopSpec
    from vld.data.knowledge.specs import spec_from_dict
    from vld.data.sft import SftSpec

    data = _mapping(raw, "data")
    check_keys(data, DATA_SECTIONS, "data")
    for key in DATA_SECTIONS:
        if key not in data:
            fail(f"data.{key}", "missing section" + ("" if key == "igsm" else "; it may be empty: {}"))
    out = {"igsm": IgsmData.from_dict(data["igsm"], "data.igsm")}
    for section, parse in (("knowledge", spec_from_dict), ("khop", KHopSpec.from_dict), ("sft", SftSpec.from_dict)):
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
    if spec.get("pattern") is None:
        fail(f"{where}.pattern", "missing (a name under patterns:, e.g. base or cycle; with an explicit"
             " order it names the order in the report)")
    spec.setdefault("k", 0)
    # The pattern must be a key of `patterns:` (`listed`): dvc.yaml lists `patterns.<name>` as a
    # param of every stage that uses it, so editing a pattern re-runs exactly its users.
    return spec, resolve_schedule(spec, n_layer, pipeline.patterns, where=where, listed=listed)


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
    from vld.train.config import MAX_SEED

    if max(value) > MAX_SEED:
        fail(where, f"a seed must be <= {MAX_SEED} (2**32 - 1), got {max(value)}")
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
    check_keys(spec, family.variant_keys + COMMON_VARIANT_KEYS, where)
    extras = family.check_variant(spec, where, pipeline)
    model = family.base_model(extras, pipeline)
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
    if train.strategy == "fsdp" and not family.fsdp:
        at = next((f"{w}.strategy" for layer, w in reversed(layers) if "strategy" in (layer or {})), where)
        fail(at, f"'fsdp' shards only {', '.join(n for n, f in FAMILIES.items() if f.fsdp)} models, not"
             f" {family.name} (use ddp; set strategy in that family's train block)")
    if train.seq_len > model.max_seq_len:
        at = next((f"{w}.seq_len" for layer, w in reversed(layers) if "seq_len" in (layer or {})), where)
        if fixed.get("seq_len"):
            at = f"data.{family.name}.{extras['data']}.length"
        fail(at, f"{train.seq_len} exceeds models.{extras['model_name']}.max_seq_len {model.max_seq_len}")
    if settings.get("seq_len") is not None and settings["seq_len"] > model.max_seq_len:
        fail(f"{family.name}.eval.seq_len", f"{settings['seq_len']} exceeds models.{extras['model_name']}.max_seq_len"
             f" {model.max_seq_len}")
    from vld.train.recipe import Recipe

    model = dataclasses.replace(model, schedule=order)
    recipe, loops = Recipe.from_dict(spec.get("recipe"), f"{where}.recipe"), None
    if recipe is not None:
        model, train, loops = recipe.apply(model, train, schedule_spec.get("layers"), where)
    variant = Variant(family=family.name, name=name, model=model,
                      pattern=schedule_spec["pattern"], k=schedule_spec["k"], layers=schedule_spec.get("layers"),
                      train=train, eval=settings, seed=train.seed, seeds=seeds, recipe=recipe, loops=loops, **extras)
    family.check_seeds(variant, pipeline)
    # what the data decides; a max_seq_len the models: entry writes is kept (it must fit: above)
    decided = family.model_from_data(variant, pipeline)
    if decided:
        written = pipeline.raw["models"][variant.model_name]
        decided = {key: value for key, value in decided.items() if key not in written}
    variant.model = dataclasses.replace(variant.model, **decided)
    family.check_train(variant, pipeline)
    if variant.train.curve_every and not family.has_curves:
        fail(f"{where}.train.curve_every", f"learning curves are measured for "
             f"{', '.join(n for n, f in FAMILIES.items() if f.has_curves)} variants only; remove it")
    return variant


def validate(raw: dict, path: str | Path = PARAMS_FILE) -> Pipeline:
    from vld.model.schedule import BUILTIN_PATTERNS, check_notation, known_patterns

    path = Path(path)
    check_keys(raw, TOP_KEYS, "params")
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

    check_keys(raw.get("hardware") or {}, HARDWARE_FIELDS, "hardware")
    for family in FAMILIES.values():
        block = _mapping(raw.get(family.name), family.name, required=False)
        check_keys(block, FAMILY_KEYS, family.name)
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
    for name, text in user_patterns.items():  # after the variants: a used pattern's error names its variant
        check_notation(text, f"patterns.{name}")
    check_keys(_mapping(raw.get("report"), "report", required=False), ("paper_numbers",), "report")
    from vld.pipeline.resources import check_resources

    check_resources(pipeline, raw)  # last: sizes of settings each valid on its own
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
                  f" steps {v.train.max_steps} lr {v.train.optim.lr:g} seeds {list(v.seeds)}"
                  + (f" recipe {v.recipe_label}" if v.recipe is not None else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)

