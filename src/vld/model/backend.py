"""How a model runs, apart from what it is (no torch import: validation stays cheap).

A `ModelConfig` is the architecture: it travels inside checkpoints and decides the function
the model computes. A `Backend` is how one process runs that model (which library does the
CPU GEMMs, whether backward recomputes each virtual layer): it is chosen per run, never saved,
and changes results by summation order at most.

    model = VLDTransformer(config, backend=Backend(activation_checkpointing=True))
    model.set_backend(Backend.from_dict({"cpu_gemm": "blas"}, where="hardware"))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from vld.errors import fail

CPU_GEMMS = ("onednn", "blas")  # see vld.model.linear

# Where each setting is spelled in params.yaml (named by the error a model config that still
# carries one of them raises).
PARAMS_SPELLING = {
    "cpu_gemm": "hardware.cpu_gemm",
    "activation_checkpointing": "<family>.train.activation_checkpointing",
}


@dataclass(frozen=True)
class Backend:
    """cpu_gemm: the library for fp32 CPU matmuls, "onednn" or "blas" (torch's own; exactly
    `nn.Linear`), see vld.model.linear. activation_checkpointing: recompute each virtual layer
    in backward instead of keeping its activations."""

    cpu_gemm: str = "onednn"
    activation_checkpointing: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self, where: str = "backend") -> "Backend":
        """One-line UserError naming the first bad field."""
        _check(self.cpu_gemm, self.activation_checkpointing, where)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping, where: str = "backend") -> "Backend":
        """A Backend from a mapping with any of its fields (missing ones take the defaults)."""
        if not isinstance(values, Mapping):
            fail(where, f"must be a mapping, got {type(values).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(map(str, values)) - set(known))
        if unknown:
            fail(f"{where}.{unknown[0]}", f"unknown key (known: {', '.join(known)})")
        defaults = cls()
        chosen = {name: values.get(name, getattr(defaults, name)) for name in known}
        _check(chosen["cpu_gemm"], chosen["activation_checkpointing"], where)
        return cls(**chosen)


def _check(cpu_gemm, activation_checkpointing, where: str) -> None:
    if not isinstance(cpu_gemm, str) or cpu_gemm not in CPU_GEMMS:
        fail(f"{where}.cpu_gemm", f"unknown CPU GEMM library {cpu_gemm!r} (known: {', '.join(CPU_GEMMS)})")
    if not isinstance(activation_checkpointing, bool):
        fail(f"{where}.activation_checkpointing", f"must be true or false, got {activation_checkpointing!r}")


def moved_to_backend(values: Mapping, where: str) -> None:
    """A model config given a Backend field: one-line UserError naming its new spelling."""
    for name in PARAMS_SPELLING:
        if name in values:
            fail(
                f"{where}.{name}",
                f"is a run setting, not part of the model: set {PARAMS_SPELLING[name]} "
                f"(vld.model.Backend.{name})",
            )


__all__ = ["Backend", "CPU_GEMMS", "PARAMS_SPELLING", "moved_to_backend"]
