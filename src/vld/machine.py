"""The machine a run computed on, as a run records it (no torch import).

The same seed and settings train to different weights on another CPU model, another thread
count, another GEMM library or another torch: a training stage writes `describe_machine()`
into its metrics.json, every stage tags its MLflow run with it, and the report says which
machines trained the models it compares. The thread count and the GEMM library are the
run's own settings (TrainConfig); this module describes what is under them.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform

CPUINFO = "/proc/cpuinfo"
# CPU features that decide which kernels the arithmetic runs in (bfloat16 only where the CPU
# multiplies it itself; AVX-512 against AVX2 picks other GEMM kernels).
RECORDED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo's text (every core of one
    machine reports the same model)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break  # the end of the first processor's block
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _cpu_name(fields: dict[str, str]) -> str | None:
    """x86's model name; on ARM, which lists no name, its implementer and part codes."""
    if fields.get("model name"):
        return fields["model name"]
    implementer, part = fields.get("CPU implementer"), fields.get("CPU part")
    if implementer or part:
        return f"CPU implementer {implementer or '?'} part {part or '?'}"
    return None


def describe_cpu(text: str) -> dict:
    """What /proc/cpuinfo's text says about the CPU, and nothing else: its name (None where the
    text names none), vendor, family and model (None where the text has none, as on ARM) and
    which of RECORDED_FLAGS it has."""
    fields = cpuinfo_fields(text)
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return {
        "cpu": _cpu_name(fields),
        "cpu_vendor": fields.get("vendor_id") or None,
        "cpu_family": _int_or_none(fields.get("cpu family")),
        "cpu_model": _int_or_none(fields.get("model")),
        "cpu_flags": [flag for flag in RECORDED_FLAGS if flag in flags],
    }


@functools.cache
def read_cpuinfo() -> str:
    """This machine's /proc/cpuinfo ("" where there is none), read once per process."""
    try:
        with open(CPUINFO) as handle:
            return handle.read()
    except OSError:
        return ""


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe_machine() -> dict:
    """This machine as a run records it: describe_cpu of its /proc/cpuinfo (the platform's
    processor name where that names none, as without /proc/cpuinfo), its core count and the
    torch release the arithmetic ran in (a new dict each call: callers may keep or change it)."""
    cpu = describe_cpu(read_cpuinfo())
    cpu["cpu"] = cpu["cpu"] or platform.processor() or platform.machine() or "unknown"
    return {**cpu, "cores": os.cpu_count(), "torch": _version("torch")}


def across_ranks(machines: list[dict]) -> dict:
    """One record for a run whose ranks described their machines (rank order): rank 0's, with
    `ranks` (every rank's) only where they differ, as on nodes of different CPUs, where the
    run's arithmetic depends on more than one machine."""
    first = dict(machines[0])
    return first if all(m == machines[0] for m in machines) else {**first, "ranks": list(machines)}


# A training run's settings that change its arithmetic on the same machine, as its metrics name them.
RUN_SETTINGS = ("threads", "cpu_gemm", "precision", "compile")


def machine_label(machine: dict) -> str:
    """One line naming a recorded machine, e.g. for a report ("unknown" for fields it lacks)."""
    if not isinstance(machine, dict) or not machine:
        return "unknown machine"
    family, model = machine.get("cpu_family"), machine.get("cpu_model")
    ident = ", ".join(filter(None, (machine.get("cpu_vendor"),
                                    None if family is None or model is None else f"family {family} model {model}")))
    flags = machine.get("cpu_flags")
    return (f"{machine.get('cpu') or 'unknown CPU'}"
            + (f" ({ident})" if ident else "")
            + (f", {' '.join(flags)}" if flags else "")
            + f", torch {machine.get('torch') or 'unknown'}"
            # the run's own settings, where the record has them (a trained model's does)
            + "".join(f", {key} {machine[key]}" for key in RUN_SETTINGS if machine.get(key) is not None)
            + _ranks_note(machine.get("ranks")))


def _ranks_note(ranks) -> str:
    """A DDP run over unlike machines (across_ranks) is labelled as such: rank 0's alone would hide it."""
    if not isinstance(ranks, list) or not ranks:
        return ""
    kinds = len({machine_label(rank) for rank in ranks if isinstance(rank, dict)})
    return f" (rank 0's; {len(ranks)} ranks on {kinds} kinds of machine)"
