"""Lazy package exports: a package names what it exports and where it lives, and the module
is imported on first use, so importing the package (for --help, validation) costs no torch."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, table: dict[str, str]) -> Callable[[str], object]:
    """A module-level `__getattr__` for `package` resolving each name in `table` from its module."""

    def __getattr__(name: str):
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
