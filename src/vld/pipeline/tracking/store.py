"""The tracking store: where it is, a cheap probe before any compute, the lock around a fresh
sqlite store's creation and the MLflow client opened on it.

Store: sqlite `<store root>/mlflow.db` (artifacts under `<store root>/mlruns/`) unless
MLFLOW_TRACKING_URI is set. The store root is the repository DVC was started in: DVC passes it
as DVC_ROOT, which for `dvc exp run --temp` and `--queue` is the original repository, not the
temporary workspace (that is thrown away after the run). Outside DVC it is the directory
holding dvc.yaml (DVC runs every stage there). A fresh sqlite store is created under a file
lock (`mlflow.db.lock`, beside it), so stages starting at once on a new shared store do not
race through MLflow's schema migration.

`probe_store` checks the store cheaply (an sqlite file and its directory writable, a `file:`
store allowed, an http server answering within seconds); a bad store stops the stage with one
line naming MLFLOW_TRACKING_URI and the way out. mlflow is imported after the probe.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from typing import Iterator

from vld.atomic import check_writable
from vld.errors import UserError, fail

OFF_HINT = "set VLD_TRACKING=off to run without MLflow (records are still written)"
HTTP_PROBE_TIMEOUT_S = 3.0
# MLflow's own http defaults are 7 retries with exponential backoff (minutes) and 120 s a
# request; a server that answered the probe and then went away should fail a stage in seconds.
HTTP_MAX_RETRIES = 2
HTTP_TIMEOUT_S = 30


def enabled() -> bool:
    return os.environ.get("VLD_TRACKING", "1").strip().lower() not in ("0", "false", "no", "off")


def repo_root(start: str | Path | None = None) -> Path:
    """The directory holding dvc.yaml (DVC's working directory for stages), else the cwd."""
    here = Path(start or os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def store_root(root: str | Path | None = None) -> Path:
    """Where the default store lives: the repository DVC was started in (DVC_ROOT; for
    `dvc exp run --temp`/`--queue` that is the original repository), else `repo_root`."""
    dvc_root = os.environ.get("DVC_ROOT", "").strip()
    if dvc_root and (Path(dvc_root) / "dvc.yaml").is_file():
        return Path(dvc_root).resolve()
    return repo_root(root)


def tracking_uri(root: str | Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{store_root(root) / 'mlflow.db'}"


def where(uri: str) -> str:
    """The store as a one-line message names it."""
    if os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        return f"MLFLOW_TRACKING_URI={uri}"
    return f"tracking store {uri} (set MLFLOW_TRACKING_URI to use another)"


def sqlite_path(uri: str) -> Path | None:
    """The database file of an `sqlite:///` URI (None for another scheme or an in-memory db)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest) if rest.startswith("/") else Path.cwd() / rest


def _scheme(uri: str) -> str:
    return uri.split(":", 1)[0].lower() if ":" in uri else ""


# ----------------------------------------------------------------------------- the probe

def probe_store(uri: str | None = None) -> None:
    """Check the tracking store cheaply, before any compute; a bad one is one UserError line."""
    uri = uri or tracking_uri()
    named = where(uri)
    scheme = _scheme(uri)
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None:
            _probe_sqlite(path, named)
    elif scheme == "file" or not scheme:  # a file: URI or a bare path: MLflow's file store
        _probe_file_store(uri, scheme, named)
    elif scheme in ("http", "https"):
        _probe_http(uri, named)


def _probe_file_store(uri: str, scheme: str, named: str) -> None:
    allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("1", "true", "yes")
    if not allowed:
        fail(named, "MLflow's file store is in maintenance mode and refuses to start; use"
                    f" sqlite:///{store_root() / 'mlflow.db'} (or unset MLFLOW_TRACKING_URI),"
                    f" set MLFLOW_ALLOW_FILE_STORE=true, or {OFF_HINT}")
    from urllib.parse import urlsplit

    directory = Path(urlsplit(uri).path if scheme == "file" else uri)
    try:
        check_writable(directory / "meta.yaml")
    except UserError as err:
        fail(named, f"{err}; {OFF_HINT}")


def _probe_sqlite(path: Path, named: str) -> None:
    import sqlite3

    directory = path.parent
    if not directory.is_dir():
        fail(named, f"the directory {directory} does not exist; create it or {OFF_HINT}")
    try:
        check_writable(path)  # sqlite writes its journal beside the database
    except UserError as err:
        fail(named, f"{err}; fix the permissions or {OFF_HINT}")
    if not path.exists():
        return
    from urllib.request import pathname2url

    try:
        con = sqlite3.connect(f"file:{pathname2url(str(path))}?mode=rw", uri=True, timeout=5)
        try:
            con.execute("SELECT count(*) FROM sqlite_master").fetchone()
            con.execute("BEGIN IMMEDIATE")  # takes the write lock: fails on a read-only database
            con.rollback()
        finally:
            con.close()
    except sqlite3.OperationalError as err:
        if "locked" in str(err):  # another stage is writing: the store works
            return
        fail(named, f"{path} cannot be used as an sqlite database ({err}); move it away or {OFF_HINT}")
    except sqlite3.Error as err:
        fail(named, f"{path} cannot be used as an sqlite database ({err}); move it away or {OFF_HINT}")


def _probe_http(uri: str, named: str) -> None:
    import urllib.error
    import urllib.parse
    import urllib.request

    parsed = urllib.parse.urlsplit(uri)
    host = parsed.hostname or "localhost"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=HTTP_PROBE_TIMEOUT_S):
            pass
    except OSError as err:
        fail(named, f"no MLflow server answers at {host}:{port} ({err.strerror or err});"
                    f" start it (make ui), point MLFLOW_TRACKING_URI at a running server, or {OFF_HINT}")
    health = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=2 * HTTP_PROBE_TIMEOUT_S) as response:
            ok = response.status == 200
    except (OSError, urllib.error.URLError, ValueError) as err:
        ok, reason = False, str(getattr(err, "reason", err))
    else:
        reason = "unexpected answer"
    if not ok:
        fail(named, f"{host}:{port} does not answer as an MLflow server ({reason} from {health});"
                    f" point MLFLOW_TRACKING_URI at a running server, or {OFF_HINT}")


# ----------------------------------------------------------------------------- the client

@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """An exclusive lock on an sqlite store (`<db>.lock`, beside it; nothing for other stores)."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    import fcntl

    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bound_http_retries() -> None:
    """Make HTTP_MAX_RETRIES and HTTP_TIMEOUT_S MLflow's defaults in this process.

    MLflow 3 takes these settings from no client or session argument: every request reads
    them through its setting objects (mlflow.environment_variables), the environment first,
    else the object's default. So the defaults are set there: a user's own
    MLFLOW_HTTP_REQUEST_MAX_RETRIES / _TIMEOUT still win, and os.environ (which child
    processes inherit) is left as the user set it."""
    from mlflow import environment_variables as settings

    settings.MLFLOW_HTTP_REQUEST_MAX_RETRIES.default = HTTP_MAX_RETRIES
    settings.MLFLOW_HTTP_REQUEST_TIMEOUT.default = HTTP_TIMEOUT_S


def open_client(root: Path):
    """An MlflowClient on the probed store of `root`, its schema created if new."""
    import logging

    uri = tracking_uri(root)
    probe_store(uri)
    from mlflow.tracking import MlflowClient

    if _scheme(uri) in ("http", "https"):
        bound_http_retries()
    # Alembic prints every migration of a fresh store at INFO; keep stage logs readable.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # the client is given its store; mlflow.set_tracking_uri would write MLFLOW_TRACKING_URI
    # into os.environ, and vld uses no fluent mlflow call that would read it
    with store_lock(uri):  # a fresh store is created (schema migrated) by one process at a time
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    return client


@contextlib.contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """MLflow's own failures (after the probe passed) as one line naming the store."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # MlflowException, sqlalchemy, requests: all one line here
        lines = str(err).strip().splitlines() or [""]
        fail(where(uri), f"the tracking store failed ({type(err).__name__}: {lines[0][:300]}); {OFF_HINT}")
