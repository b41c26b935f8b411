"""How a model runs, apart from what it is (no torch import: validation stays cheap).

A `ModelConfig` is the architecture: it travels inside checkpoints and decides the function
the model computes. A `Backend` is how one process runs that model (which library does the
CPU GEMMs, whether backward recomputes each virtual layer): it is chosen per run, never saved,
and changes results by summation order at most. `hardware.cpu_gemm: auto` (the default) is
the library `CPU_GEMM_BY_CPU` lists for this kind of CPU: TrainConfig resolves it
once, where the hardware block is parsed, and a Backend only ever holds a library.

    model = VLDTransformer(config, backend=Backend(activation_checkpointing=True))
    model.set_backend(Backend.from_dict({"cpu_gemm": "blas"}, where="hardware"))
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Mapping

from vld.declared import check_keys, declared_keys
from vld.errors import fail
from vld.machine import describe_cpu, read_cpuinfo

CPU_GEMMS = ("onednn", "blas")  # see vld.model.linear
AUTO = "auto"  # hardware.cpu_gemm's default: the library CPU_GEMM_BY_CPU names for this CPU

# The faster library per kind of CPU, from measurements (docs/model.md#cpu-gemms), never from a
# timing at start-up: that would make a run's arithmetic depend on the load at the time. A kind
# is the CPU's vendor (/proc/cpuinfo `vendor_id`) and its widest vector instructions, which pick
# both libraries' kernels. `bench/bench_model.py --sections gemm,hf` prints both libraries'
# rates and this choice; a kind of CPU gets its entry from that measurement.
CPU_GEMM_BY_CPU = {
    # AMD EPYC family 25 model 17 (Zen 4), the development machine, and family 26 model 2 (Zen 5):
    # oneDNN runs AVX-512 kernels there, MKL does not on a non-Intel CPU, and oneDNN's GEMMs were
    # the faster (on Zen 5 1.7x MKL's over the width-256 step's GEMMs, and the k-hop stages too).
    ("AuthenticAMD", "avx512f"): "onednn",
    # AMD EPYC family 25 model 1 (Zen 3, issue 27): both libraries run AVX2 kernels and MKL's
    # were the faster, for the width-256 step's GEMMs and for both k-hop stages.
    ("AuthenticAMD", "avx2"): "blas",
    # Intel Xeons family 6 models 207 and 167 (issue 27): MKL's weight-gradient GEMMs beat
    # oneDNN's and the model trained faster with the BLAS.
    ("GenuineIntel", "avx512f"): "blas",
}
# Widest first: the entry a CPU with both takes.
VECTOR_WIDTHS = ("avx512f", "avx2")
# Any other CPU (ARM, an unlisted vendor or width, no /proc/cpuinfo): nothing was measured
# there, so torch's own choice for the platform, exactly `nn.Linear`.
UNLISTED_CPU_GEMM = "blas"

# Where each setting is spelled in params.yaml (named by the error a model config that still
# carries one of them raises).
PARAMS_SPELLING = {
    "cpu_gemm": "hardware.cpu_gemm",
    "activation_checkpointing": "<family>.train.activation_checkpointing",
}


def cpu_gemm_for(cpuinfo: str) -> str:
    """The CPU GEMM library for the CPU /proc/cpuinfo's text describes."""
    cpu = describe_cpu(cpuinfo)
    width = next((flag for flag in VECTOR_WIDTHS if flag in cpu["cpu_flags"]), None)
    return CPU_GEMM_BY_CPU.get((cpu["cpu_vendor"], width), UNLISTED_CPU_GEMM)


@functools.cache
def machine_cpu_gemm() -> str:
    """cpu_gemm_for this machine's CPU (its /proc/cpuinfo is read once per process)."""
    return cpu_gemm_for(read_cpuinfo())


def resolve_cpu_gemm(value, where: str) -> str:
    """A cpu_gemm setting as a library: "auto" becomes this CPU's (machine_cpu_gemm), a library
    stays; anything else is a one-line UserError naming `where` (the setting, or a bench's flag)."""
    if value == AUTO:
        return machine_cpu_gemm()
    if not isinstance(value, str) or value not in CPU_GEMMS:
        fail(where, f"unknown CPU GEMM library {value!r} (known: {AUTO}, {', '.join(CPU_GEMMS)})")
    return value


@dataclass(frozen=True)
class Backend:
    """cpu_gemm: the library for fp32 CPU matmuls, "onednn" or "blas" (torch's own; exactly
    `nn.Linear`), see vld.model.linear; by default the one listed for this kind of CPU
    (`machine_cpu_gemm`). activation_checkpointing: recompute each virtual layer
    in backward instead of keeping its activations."""

    cpu_gemm: str = field(default_factory=machine_cpu_gemm)
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
        check_keys(values, cls, where)
        known = declared_keys(cls)
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


__all__ = ["Backend", "CPU_GEMMS", "CPU_GEMM_BY_CPU", "PARAMS_SPELLING", "cpu_gemm_for", "machine_cpu_gemm",
           "moved_to_backend", "resolve_cpu_gemm"]
