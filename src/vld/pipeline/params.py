"""Load and validate params.yaml: every user error is one line naming the key, before compute.

Every stage calls `load_pipeline()` first and so validates the WHOLE file, not only its own
part: whichever stage `dvc repro` runs first stops the pipeline on a bad file. The checks are
torch-free (vld.model.config, vld.train.config and vld.eval.variant import no torch).

`python -m vld.pipeline.params [--file params.yaml]` validates and prints the variants.

Layout of params.yaml (docs/pipeline.md has the full description):

    profile: default                      # name; also the MLflow experiment
    patterns: {name: notation}            # built-ins listed verbatim + user patterns
    data:
      igsm: {generator: {...}, train: {n, seed}, tests: {NAME: {op, n, seed}}}
      knowledge: {NAME: {kind: random_tokens, k, n, seed} | {kind: biographies, people, ...}}
    models: {NAME: ModelConfig keys (or preset: NAME), vocab_size comes from the data}
    hardware: {accelerator, devices, num_nodes, strategy, precision, num_workers}
    reasoning: {train: {...}, eval: {tests: [NAME, ...], ...}, variants: {NAME: VARIANT}}
    knowledge: {train: {...}, eval: {...}, variants: {NAME: VARIANT + data: DATASET}}
    retrofit:  {train: {...}, eval: {...}, variants: {NAME: {source: REASONING_VARIANT,
                schedule, method: full|lora|lora_per_visit, lora_rank, train}}}
    VARIANT = {model: NAME, schedule: {pattern: NAME, k: INT, layers: "a..b"}, seed: INT,
               train: {overrides of the family's train block}}
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from vld.errors import UserError, fail, run_cli

PARAMS_FILE = "params.yaml"
FAMILIES = ("reasoning", "knowledge", "retrofit")
TOP_KEYS = ("profile", "description", "patterns", "data", "models", "hardware", "report") + FAMILIES
HARDWARE_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "num_workers")
FAMILY_KEYS = ("train", "eval", "variants")
VARIANT_KEYS = {
    "reasoning": ("model", "schedule", "seed", "train", "label"),
    "knowledge": ("model", "data", "schedule", "seed", "train", "label"),
    "retrofit": ("source", "schedule", "method", "lora_rank", "seed", "train", "label"),
}
SCHEDULE_KEYS = ("pattern", "k", "layers")
RETROFIT_METHODS = ("full", "lora", "lora_per_visit")  # as vld.retrofit.api.METHODS
KNOWLEDGE_KINDS = {
    "random_tokens": ("kind", "k", "n", "seed"),
    "biographies": ("kind", "people", "mode", "seed"),
}
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


def file_sha256(path: str | Path = PARAMS_FILE) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able config (names work directories)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------- the plan


@dataclass
class Variant:
    """One validated variant of a family, with everything its stages need."""

    family: str
    name: str
    model_name: str  # the models: key (retrofit: the source's model)
    model: dict  # ModelConfig dict, schedule resolved; vocab_size is set from the data
    schedule: list[int]
    pattern: str
    k: int
    layers: str | None
    train: dict  # TrainConfig dict: hardware + family train + variant overrides
    eval: dict  # the family's eval block
    seed: int
    data: str | None = None  # knowledge: dataset name under data.knowledge
    source: str | None = None  # retrofit: reasoning variant it starts from
    method: str | None = None
    lora_rank: int | None = None
    label: str | None = None

    @property
    def effective_depth(self) -> int:
        return len(self.schedule)

    @property
    def key(self) -> str:
        return f"{self.family}.variants.{self.name}"

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    def train_config(self):
        from vld.train.config import TrainConfig

        return TrainConfig.from_dict(self.train, where=f"{self.key}.train")

    def model_config(self, vocab_size: int):
        from vld.model.config import ModelConfig

        d = dict(self.model)
        d["vocab_size"] = int(vocab_size)
        return ModelConfig.from_dict(d, where=f"models.{self.model_name}")

    def flat_params(self) -> dict[str, Any]:
        """Flattened for MLflow params."""
        out = {"family": self.family, "variant": self.name, "model": self.model_name,
               "pattern": self.pattern, "k": self.k, "layers": self.layers,
               "effective_depth": self.effective_depth, "schedule": ",".join(map(str, self.schedule)),
               "seed": self.seed}
        for key in ("data", "source", "method", "lora_rank"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out.update(_flatten(self.model, "model"))
        out.update(_flatten(self.train, "train"))
        return out


@dataclass
class Pipeline:
    """params.yaml, validated."""

    raw: dict
    path: Path
    profile: str
    patterns: dict[str, str]  # user patterns only (built-ins are known to vld.model.schedule)
    variants: dict[str, dict[str, Variant]] = field(default_factory=dict)

    def variant(self, family: str, name: str) -> Variant:
        if family not in FAMILIES:
            fail("--family", f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
        table = self.variants.get(family, {})
        if name not in table:
            known = ", ".join(table) or "none"
            fail("--variant", f"{family} has no variant {name!r} in {self.path} (known: {known})")
        return table[name]

    @property
    def igsm(self) -> dict:
        return self.raw.get("data", {}).get("igsm") or {}

    @property
    def knowledge_data(self) -> dict:
        return self.raw.get("data", {}).get("knowledge") or {}


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


def _name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        fail(where, f"{name!r} is not a valid name (letters, digits, _ and -, starting with a letter)")
    return name


def _int(value: Any, where: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(where, f"must be an integer, got {_show(value)}")
    if minimum is not None and value < minimum:
        fail(where, f"must be >= {minimum}, got {value}")
    return value


def _show(value: Any) -> str:
    return "nothing" if value is None else repr(value)


def _merge(base: dict, over: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


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


def _patterns(raw: Any) -> dict[str, str]:
    """Built-ins may be listed (so dvc.yaml can track every pattern by name) but not changed."""
    from vld.model.schedule import BUILTIN_PATTERNS, known_patterns

    table = _mapping(raw, "patterns", required=False)
    user: dict[str, str] = {}
    for name, text in table.items():
        _name(name, f"patterns.{name}")
        if name in BUILTIN_PATTERNS:
            if text != BUILTIN_PATTERNS[name]:
                fail(f"patterns.{name}", f"built-in pattern; its notation is {BUILTIN_PATTERNS[name]!r}"
                     " (define a new name for a different order)")
            continue
        user[name] = text
    known_patterns(user)  # names and types
    return user


def _schedule(raw: Any, where: str, n_layer: int, user_patterns: dict, listed: Mapping) -> tuple[dict, list[int]]:
    from vld.model.schedule import resolve_schedule

    # Required, even for the base pattern: dvc.yaml reads `${item.schedule.pattern}`.
    if raw is None:
        fail(where, "missing: give {pattern: NAME, k: INT} (pattern base for no reuse)")
    spec = _mapping(raw, where)
    _known(spec, SCHEDULE_KEYS, where)
    if "pattern" not in spec:
        fail(f"{where}.pattern", "missing (a name under patterns:, e.g. base or cycle)")
    pattern = spec["pattern"]
    spec.setdefault("k", 0)
    # The pattern must be a key of `patterns:`: dvc.yaml lists `patterns.<name>` as a param
    # of every stage that uses it, so editing a pattern re-runs exactly its users.
    if not isinstance(pattern, str) or pattern not in listed:
        fail(f"{where}.pattern", f"unknown pattern {pattern!r} (define it under patterns: in params.yaml;"
             f" known: {', '.join(listed)})")
    order = resolve_schedule(spec, n_layer, user_patterns, where=where)
    return spec, order


def validate(raw: dict, path: str | Path = PARAMS_FILE) -> Pipeline:
    from vld.eval.variant import SETTING_KEYS
    from vld.model.config import ModelConfig
    from vld.pipeline.data_igsm import igsm_config  # torch-free; imported here: it imports this module

    path = Path(path)
    _known(raw, TOP_KEYS, "params")
    # dvc.yaml reads these keys (foreach and params): a missing one would be a DVC parse error.
    for key in ("profile", "patterns", "data", "models", "hardware") + FAMILIES:
        if key not in raw:
            fail(key, "missing section (every profile has it; it may be empty: {})")
    for key, empty in (("igsm", ""), ("knowledge", "; it may be empty: {}")):
        if not isinstance(raw.get("data"), Mapping) or key not in raw["data"]:
            fail(f"data.{key}", f"missing section{empty}")
    profile = raw.get("profile")
    if not isinstance(profile, str) or not _NAME_RE.match(profile):
        fail("profile", f"must be a name (letters, digits, _ and -), got {_show(profile)}")
    user_patterns = _patterns(raw.get("patterns"))
    listed = _mapping(raw.get("patterns"), "patterns", required=False)

    # data
    data = _mapping(raw.get("data"), "data", required=False)
    _known(data, ("igsm", "knowledge"), "data")
    # The iGSM stages always run (dvc.yaml lists them without a condition).
    igsm = _mapping(data.get("igsm"), "data.igsm")
    if not igsm:
        fail("data.igsm", "needs generator, train and tests (dvc.yaml always runs the iGSM data stages)")
    _known(igsm, ("generator", "train", "tests"), "data.igsm")
    if "generator" not in igsm:
        fail("data.igsm.generator", "missing (generator settings; it may be empty: {})")
    generator_cfg = igsm_config(_mapping(igsm.get("generator"), "data.igsm.generator", required=False), "data.igsm.generator")
    train = _mapping(igsm.get("train"), "data.igsm.train")
    _known(train, ("n", "seed"), "data.igsm.train")
    _int(train.get("n"), "data.igsm.train.n", 1)
    _int(train.get("seed", 0), "data.igsm.train.seed", 0)
    tests = _mapping(igsm.get("tests"), "data.igsm.tests")
    if not tests:
        fail("data.igsm.tests", "needs at least one test set")
    for name, test in tests.items():
        where = f"data.igsm.tests.{_name(name, f'data.igsm.tests.{name}')}"
        test = _mapping(test, where)
        _known(test, ("op", "n", "seed"), where)
        _int(test.get("op"), f"{where}.op", 1)
        generator_cfg.check_op(test["op"], f"{where}.op")
        _int(test.get("n"), f"{where}.n", 1)
        _int(test.get("seed", 0), f"{where}.seed", 0)
    kdata = _mapping(data.get("knowledge"), "data.knowledge", required=False)
    for name, spec in kdata.items():
        where = f"data.knowledge.{_name(name, f'data.knowledge.{name}')}"
        spec = _mapping(spec, where)
        kind = spec.get("kind")
        if kind not in KNOWLEDGE_KINDS:
            fail(f"{where}.kind", f"unknown kind {_show(kind)} (known: {', '.join(KNOWLEDGE_KINDS)})")
        _known(spec, KNOWLEDGE_KINDS[kind], where)
        if kind == "random_tokens":
            _int(spec.get("k"), f"{where}.k", 2)
            _int(spec.get("n"), f"{where}.n", 2)
            if spec["n"] > 2**32:
                fail(f"{where}.n", f"at most 2**32 values, got {spec['n']}")
        else:
            _int(spec.get("people"), f"{where}.people", 1)
            if spec.get("mode", "fixed") not in ("fixed", "fresh"):
                fail(f"{where}.mode", f"must be fixed or fresh, got {_show(spec.get('mode'))}")
        _int(spec.get("seed", 0), f"{where}.seed", 0)

    # models: validated with a placeholder vocabulary (the data decides the real one)
    models = _mapping(raw.get("models"), "models", required=False)
    model_cfgs: dict[str, dict] = {}
    for name, spec in models.items():
        where = f"models.{_name(name, f'models.{name}')}"
        spec = _mapping(spec, where)
        if "vocab_size" in spec:
            fail(f"{where}.vocab_size", "is set from the dataset's tokenizer; remove it")
        if "schedule" in spec:
            fail(f"{where}.schedule", "schedules belong to variants (variants.NAME.schedule), not models")
        cfg = ModelConfig.from_dict({**spec, "vocab_size": 2}, where=where)
        model_cfgs[name] = {k: v for k, v in cfg.to_dict().items() if k not in ("vocab_size", "schedule")}

    hardware = _mapping(raw.get("hardware"), "hardware", required=False)
    _known(hardware, HARDWARE_KEYS, "hardware")

    pipeline = Pipeline(raw=raw, path=path, profile=profile, patterns=user_patterns)
    for family in FAMILIES:
        block = _mapping(raw.get(family), family, required=False)
        _known(block, FAMILY_KEYS, family)
        if "variants" not in block:
            fail(f"{family}.variants", "missing (it may be empty: {})")
        variants = _mapping(block.get("variants"), f"{family}.variants", required=False)
        pipeline.variants[family] = {}
        if not variants:
            continue
        if "eval" not in block:
            fail(f"{family}.eval", "missing (evaluation settings; it may be empty: {})")
        family_train = _mapping(block.get("train"), f"{family}.train")
        from vld.train.config import TrainConfig

        merged_family = _merge(hardware, family_train)
        TrainConfig.from_dict(merged_family, where=f"{family}.train")
        settings = _mapping(block.get("eval"), f"{family}.eval", required=False)
        _known(settings, ("tests",) + tuple(SETTING_KEYS), f"{family}.eval")
        if family in ("reasoning", "retrofit"):
            if not igsm:
                fail("data.igsm", f"missing: {family} variants need the iGSM data section")
            tests = settings.get("tests")
            if tests is None:
                tests = list(igsm["tests"])
                settings["tests"] = tests
            if not isinstance(tests, list) or not tests:
                fail(f"{family}.eval.tests", "must be a non-empty list of test-set names")
            for test in tests:
                if test not in igsm["tests"]:
                    fail(f"{family}.eval.tests", f"names a missing dataset {test!r} (data.igsm.tests has:"
                         f" {', '.join(igsm['tests'])})")
        elif "tests" in settings:
            fail(f"{family}.eval.tests", "only reasoning and retrofit variants have iGSM test sets")
        for name, spec in variants.items():
            where = f"{family}.variants.{_name(name, f'{family}.variants.{name}')}"
            spec = _mapping(spec, where)
            _known(spec, VARIANT_KEYS[family], where)
            extra: dict[str, Any] = {}
            if family == "retrofit":
                source = spec.get("source")
                if source is None:
                    fail(f"{where}.source", "missing: name the reasoning variant to retrofit")
                if source not in pipeline.variants["reasoning"]:
                    fail(f"{where}.source", f"names a missing reasoning variant {source!r} (known:"
                         f" {', '.join(pipeline.variants['reasoning']) or 'none'})")
                origin = pipeline.variants["reasoning"][source]
                model_name = origin.model_name
                method = spec.get("method", "full")
                if method not in RETROFIT_METHODS:
                    fail(f"{where}.method", f"unknown method {_show(method)} (known: {', '.join(RETROFIT_METHODS)})")
                rank = _int(spec.get("lora_rank", 4), f"{where}.lora_rank", 1)
                extra = dict(source=source, method=method, lora_rank=rank)
            else:
                model_name = spec.get("model")
                if model_name is None:
                    fail(f"{where}.model", "missing: every variant names a model under models:")
                if model_name not in model_cfgs:
                    fail(f"{where}.model", f"unknown model {model_name!r} (known: {', '.join(model_cfgs) or 'none'})")
                if family == "knowledge":
                    dataset = spec.get("data")
                    if dataset is None:
                        fail(f"{where}.data", "missing: name a dataset under data.knowledge")
                    if dataset not in kdata:
                        fail(f"{where}.data", f"names a missing dataset {dataset!r} (data.knowledge has:"
                             f" {', '.join(kdata) or 'none'})")
                    extra = dict(data=dataset)
            model = model_cfgs[model_name]
            sched_spec, order = _schedule(spec.get("schedule"), f"{where}.schedule", model["n_layer"],
                                          user_patterns, listed)
            over = _mapping(spec.get("train"), f"{where}.train", required=False)
            train = _merge(merged_family, over)
            seed = _int(spec.get("seed", train.get("seed", 0)), f"{where}.seed", 0)
            train["seed"] = seed
            tcfg = TrainConfig.from_dict(train, where=f"{where}.train")
            if tcfg.seq_len > model["max_seq_len"]:
                fail(f"{where}.train.seq_len", f"{tcfg.seq_len} exceeds models.{model_name}.max_seq_len"
                     f" {model['max_seq_len']}")
            eval_len = settings.get("seq_len")
            if eval_len is not None and eval_len > model["max_seq_len"]:
                fail(f"{family}.eval.seq_len", f"{eval_len} exceeds models.{model_name}.max_seq_len")
            label = spec.get("label")
            if label is not None and not isinstance(label, str):
                fail(f"{where}.label", f"must be a string, got {_show(label)}")
            pipeline.variants[family][name] = Variant(
                family=family, name=name, model_name=model_name,
                model={**model, "schedule": order}, schedule=order,
                pattern=sched_spec["pattern"], k=sched_spec["k"], layers=sched_spec.get("layers"),
                train=train, eval=settings, seed=seed, label=label, **extra)
    report = _mapping(raw.get("report"), "report", required=False)
    _known(report, ("paper_numbers",), "report")
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
                  f" steps {v.train['max_steps']}")
    return 0


if __name__ == "__main__":
    run_cli(main)


__all__ = ["Pipeline", "Variant", "UserError", "config_hash", "file_sha256", "load_pipeline", "load_yaml", "validate"]
