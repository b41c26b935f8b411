"""The iGSM section of params.yaml: the generator's settings, the training set and the test sets.

    data.igsm: {generator: {preset?, IgsmConfig fields}, train: {n, seed}, tests: {NAME: {op, n, seed}}}

Train and tests share one generator config, so they share one lexicon and tokenizer. Every test
problem has exactly `op` operations."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from vld.declared import check_keys
from vld.errors import fail
from vld.data.igsm.generator import IgsmConfig

SECTION_KEYS = ("generator", "train", "tests")


def _int(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(where, f"must be an integer, got {'nothing' if value is None else repr(value)}")
    if value < minimum:
        fail(where, f"must be >= {minimum}, got {value}")
    return value


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, Mapping):
        fail(where, f"must be a mapping, got {'nothing' if value is None else repr(value)}")
    return dict(value)


@dataclass(frozen=True)
class IgsmSet:
    """One generated set: `n` problems from `seed`; test sets also fix the operation count."""

    n: int
    seed: int = 0
    op: int | None = None

    @classmethod
    def from_dict(cls, values: Any, where: str, test: bool) -> "IgsmSet":
        values = _mapping(values, where)
        check_keys(values, ("op", "n", "seed") if test else ("n", "seed"), where)
        op = _int(values.get("op"), f"{where}.op", 1) if test else None
        return cls(n=_int(values.get("n"), f"{where}.n", 1), seed=_int(values.get("seed", 0), f"{where}.seed", 0), op=op)

    def to_dict(self) -> dict[str, int]:
        return {key: value for key, value in (("op", self.op), ("n", self.n), ("seed", self.seed)) if value is not None}


@dataclass(frozen=True)
class IgsmData:
    generator: IgsmConfig
    generator_settings: dict  # as written (recorded by the data stages)
    train: IgsmSet
    tests: dict[str, IgsmSet] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Any, where: str = "data.igsm") -> "IgsmData":
        values = _mapping(values, where)
        if not values:
            fail(where, "needs generator, train and tests (dvc.yaml always runs the iGSM data stages)")
        check_keys(values, SECTION_KEYS, where)
        if "generator" not in values:
            fail(f"{where}.generator", "missing (generator settings; it may be empty: {})")
        settings = dict(values["generator"] or {})
        generator = IgsmConfig.from_dict(settings, f"{where}.generator")
        train = IgsmSet.from_dict(values.get("train"), f"{where}.train", test=False)
        tests_raw = _mapping(values.get("tests"), f"{where}.tests")
        if not tests_raw:
            fail(f"{where}.tests", "needs at least one test set")
        tests = {}
        for name, spec in tests_raw.items():
            tests[name] = IgsmSet.from_dict(spec, f"{where}.tests.{name}", test=True)
            generator.check_op(tests[name].op, f"{where}.tests.{name}.op")
        return cls(generator, settings, train, tests)


    def longest_prompt(self, test: str, directory: str | Path) -> int | None:
        """The longest evaluation prompt (problem <sep>, in tokens) of test set `test`, as its data
        stage recorded it in `directory`/meta.json; None when that directory does not hold this
        set as params.yaml describes it now (not generated yet, or stale: DVC regenerates it)."""
        spec = self.tests[test]
        try:
            meta = json.loads((Path(directory) / "meta.json").read_text())
            longest = int(meta["prompt_length"]["max"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        made_as = {key: meta.get(key) for key in ("split", "op", "n", "seed", "config")}
        wanted = {"split": "test", "op": spec.op, "n": spec.n, "seed": spec.seed,
                  "config": json.loads(json.dumps(self.generator.to_dict()))}
        return longest if made_as == wanted else None
