"""The knowledge data sets of params.yaml (`data.knowledge.<name>`), one spec per kind.

Each kind checks its own settings (the same checks its generator applies) and makes its
token set; the pipeline's validator and data stage only dispatch on `kind`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from vld.declared import check_keys
from vld.errors import fail


@dataclass(frozen=True)
class RandomTokensSpec:
    k: int
    n: int
    seed: int = 0
    kind: str = "random_tokens"

    def check(self, prefix: str) -> None:
        from vld.data.knowledge.random_tokens import validate

        validate(self.k, self.n, self.seed, prefix)

    @property
    def n_tokens(self) -> int | None:
        return self.k

    def make(self, out: Path) -> None:
        from vld.data.knowledge.random_tokens import make_random_tokens

        make_random_tokens(self.k, self.n, self.seed, out)


@dataclass(frozen=True)
class BiographiesSpec:
    people: int
    mode: str = "fixed"
    seed: int = 0
    kind: str = "biographies"

    def check(self, prefix: str) -> None:
        from vld.data.knowledge.biographies import BioLists, validate

        validate(self.people, self.seed, self.mode, BioLists.load(), prefix)

    @property
    def n_tokens(self) -> int | None:
        return None  # known once rendered

    def make(self, out: Path) -> None:
        from vld.data.knowledge.biographies import make_biographies

        make_biographies(self.people, self.seed, out, mode=self.mode)


KINDS = {"random_tokens": RandomTokensSpec, "biographies": BiographiesSpec}


def spec_from_dict(values: Any, where: str):
    """The spec of one `data.knowledge.<name>` entry; one-line UserError naming the key."""
    if not isinstance(values, Mapping):
        fail(where, f"must be a mapping with a kind ({', '.join(KINDS)}), got {values!r}")
    kind = values.get("kind")
    if kind not in KINDS:
        fail(f"{where}.kind", f"unknown kind {'nothing' if kind is None else repr(kind)} (known: {', '.join(KINDS)})")
    cls = KINDS[kind]
    check_keys(values, cls, where)
    required = [name for name, f in cls.__dataclass_fields__.items() if f.default is f.default_factory]
    for key in required:
        if key not in values:
            fail(f"{where}.{key}", "missing (required)")
    spec = cls(**values)
    spec.check(f"{where}.")
    return spec


def spec_to_dict(spec) -> dict[str, Any]:
    return asdict(spec)
