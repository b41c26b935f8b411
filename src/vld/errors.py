"""User errors: one line saying what is wrong and where, never a traceback.

Code that validates user input raises `UserError("where: what")`; every command-line
entry point runs through `run_cli`, which prints that line and exits with status 2. An
OSError that means an output cannot be written (a read-only directory, a full disk, a quota)
is one line too, naming the file.
"""

from __future__ import annotations

import errno
import gc
import sys
from typing import Callable, NoReturn

# errno values that mean "this output cannot be written" rather than a bug
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})


class UserError(ValueError):
    """Bad input from the user (a config key, a path, a CLI flag). The message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def fail(where: str, what: str) -> NoReturn:
    """Raise a UserError naming the offending key or path first."""
    raise UserError(f"{where}: {what}")


def run_cli(main: Callable[..., object], *args, **kwargs) -> None:
    """Run a command-line `main`, then end the process: a UserError becomes `vld: error: <line>`
    and exit code 2. Only for a `__main__` block: it freezes the garbage collector (below)."""
    try:
        result = main(*args, **kwargs)
    except UserError as err:
        print(f"vld: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        print(f"vld: error: {err.filename or 'output'}: cannot be written ({err.strerror})", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("vld: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        # The interpreter's exit runs one more full collection over every object alive, most
        # of them the modules of torch, Lightning and MLflow: seconds per stage for nothing, the
        # outputs being written and closed by now (docs/performance.md). Frozen objects are skipped.
        gc.freeze()
    sys.exit(result if isinstance(result, int) else 0)
