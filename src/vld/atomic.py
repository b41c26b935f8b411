"""Atomic outputs: write to a temporary sibling, then rename, so a killed stage never
leaves a half-written file or directory behind.

Directories written by vld carry a marker file; an existing directory without it is
not ours and is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from vld.errors import fail

MARKER = ".vld-output"


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def save_torch(path: str | os.PathLike, obj) -> None:
    import torch  # heavy: only when a checkpoint is written

    with atomic_file(path, "wb") as handle:
        torch.save(obj, handle)


def check_replaceable(path: str | os.PathLike) -> None:
    """Fail (one line) if `path` exists and was not written by vld."""
    path = Path(path)
    if path.is_dir() and not (path / MARKER).exists():
        if any(path.iterdir()):
            fail(str(path), "exists and was not written by vld; refusing to replace it")
    elif path.exists() and not path.is_dir():
        fail(str(path), "exists and is not a directory; refusing to replace it")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `path` whole.

    Call `check_replaceable(path)` before any compute so a bad output path fails early;
    it is checked again here.
    """
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        (tmp / MARKER).write_text("written by vld\n")
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
