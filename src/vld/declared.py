"""Declared configuration: a config section's keys are declared once, by the dataclass (or
key list) of the module that owns the section, and checked here, the one way for every section.

`check_keys(values, declared, where)` fails in one line, `<where>.<key>: unknown key (known:
...)`, on the first key of `values` that `declared` does not name. The owner then checks each
value's type and range once, where it builds its config (its `from_dict` / `validate`).
Torch-free and import-free: every owner, down to vld.model and vld.data, may use it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from vld.errors import fail


def declared_keys(declared: type | Iterable[str]) -> tuple[str, ...]:
    """The keys a dataclass declares (its fields, in order), or the given key list."""
    if dataclasses.is_dataclass(declared):
        return tuple(f.name for f in dataclasses.fields(declared))
    return tuple(declared)


def check_keys(values: Mapping, declared: type | Iterable[str], where: str, *, also: Iterable[str] = (),
               sort: bool = False) -> None:
    """One line naming the first key of `values` that is neither declared nor in `also` (keys the
    owner reads before building its config, such as `preset`). The message lists `also`, then
    the declared keys (sorted when `sort`)."""
    keys = declared_keys(declared)
    known = (*also, *(sorted(keys) if sort else keys))
    for key in values:
        if key not in known:
            fail(f"{where}.{key}", f"unknown key (known: {', '.join(known)})")
