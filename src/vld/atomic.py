"""Atomic outputs: write to a temporary sibling, then rename, so a killed stage never
leaves a half-written file or directory behind.

Directories written by vld carry a marker file; an existing directory without it is
not ours and is never replaced. Files and directories get the usual modes under the
process's umask (as `open` and `mkdir` would give them), not the 0600/0700 of temporary
files: outputs on a shared filesystem stay readable by the group.

Write failures (a read-only directory, a full disk, a quota) are one `UserError` line naming
the output; `check_writable` finds the first two before any compute.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from vld.errors import WRITE_ERRNOS, UserError, fail

MARKER = ".vld-output"
# Below this much free space an output directory counts as full before any compute.
MIN_FREE_BYTES = 1 << 20


class OutputError(UserError):
    """An output could not be written (the previous version, if any, is unchanged)."""

    def __init__(self, path: Path, reason: str):
        self.reason = reason
        super().__init__(f"{path}: cannot be written ({reason}); the previous version, if any, is unchanged")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _cannot_write(path: Path, err: BaseException) -> OutputError:
    if isinstance(err, OutputError):
        return OutputError(path, err.reason)
    reason = getattr(err, "strerror", None) or (str(err).strip().splitlines() or [type(err).__name__])[0]
    return OutputError(path, reason)


def write_failure(err: BaseException) -> OSError | None:
    """The OSError meaning "cannot write" (full disk, read-only, quota) behind `err`, if any:
    torch's zip writer turns a failed write into a RuntimeError whose context holds it."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_writable(path: str | os.PathLike) -> None:
    """Fail (one line) now if `path` could not be written: its directory (or the nearest one
    that exists, where the rest would be created) refuses a new file, or has less than
    MIN_FREE_BYTES free."""
    path = Path(path)
    directory = _existing_ancestor(path.parent)
    if not directory.is_dir():
        fail(str(path), f"cannot be written: {directory} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".vld-probe.", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        fail(str(path), f"cannot be written ({err.strerror or err} in {directory})")
    with contextlib.suppress(OSError):
        stat = os.statvfs(directory)
        free = stat.f_bavail * stat.f_frsize
        if free < MIN_FREE_BYTES:
            fail(str(path), f"cannot be written ({os.strerror(errno.ENOSPC)}: {free} bytes free in {directory})")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            raise _cannot_write(path, err) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(text)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def save_torch(path: str | os.PathLike, obj) -> None:
    import torch  # heavy: only when a checkpoint is written

    try:
        with atomic_file(path, "wb") as handle:
            torch.save(obj, handle)
    except RuntimeError as err:
        cause = write_failure(err)
        if cause is None:
            raise
        raise _cannot_write(Path(path), cause) from None


def check_replaceable(path: str | os.PathLike) -> None:
    """Fail (one line) if `path` exists and was not written by vld, or cannot be written."""
    path = Path(path)
    if path.is_dir() and not (path / MARKER).exists():
        if any(path.iterdir()):
            fail(str(path), "exists and was not written by vld; refusing to replace it")
    elif path.exists() and not path.is_dir():
        fail(str(path), "exists and is not a directory; refusing to replace it")
    check_writable(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory; on success it replaces `path` whole.

    Call `check_replaceable(path)` before any compute so a bad output path fails early;
    it is checked again here.
    """
    path = Path(path)
    check_replaceable(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        (tmp / MARKER).write_text("written by vld\n")
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OutputError) or (isinstance(err, OSError) and err.errno in WRITE_ERRNOS):
            raise _cannot_write(path, err) from None
        raise
