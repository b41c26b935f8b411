"""MLflow tracking of the pipeline: one experiment per profile, a parent run per pipeline, a
child run per stage and variant.

Store: sqlite `<store root>/mlflow.db` (artifacts under `<store root>/mlruns/`) unless
MLFLOW_TRACKING_URI is set. The store root is the repository DVC was started in: DVC passes it
as DVC_ROOT, which for `dvc exp run --temp` and `--queue` is the original repository, not the
temporary workspace (that is thrown away after the run). Outside DVC it is the directory
holding dvc.yaml (DVC runs every stage there). A fresh sqlite store is created under a file
lock (`mlflow.db.lock`, beside it), so stages starting at once on a new shared store do not
race through MLflow's schema migration.

Before anything is computed, `probe_store` checks the store cheaply (an sqlite file and its
directory writable, a `file:` store allowed, an http server answering within seconds); a bad
store stops the stage with one line naming MLFLOW_TRACKING_URI and the way out.

Parent run: found or created by its tags `vld.profile`, `vld.params_sha256` (of params.yaml)
and `vld.git_commit`; every stage process attaches its child with `mlflow.parentRunId`. So one
version of params.yaml at one commit is one parent run, whichever stages ran for it.

States. A child run is RUNNING while its process runs; the process (`host:pid:start time`) is
its tag `vld.process`, and a RUNNING run whose process is gone from this host (a `kill -9`)
is closed as KILLED by the next stage that starts in the same experiment. The parent is
RUNNING while a child runs; whenever a child ends, the parent is settled from its children:
FINISHED once a report child has finished (a later failed attempt does not undo a complete
pipeline: the failed child says what failed), else FAILED if the latest attempt of some stage
failed or was killed, else FINISHED; its tag `vld.pipeline_state` says complete, failed or
partial (running while a child runs).

Child run (`<stage>@<variant>`): params (the variant's resolved settings), metrics (final
values; the training curve through Lightning's MLFlowLogger bound to the same run id), tags
(vld.stage, vld.variant, vld.pattern, vld.k, vld.git_commit, vld.data.<name>.sha256, ...) and
artifacts (result files, tables, figures, the resolved config).

Cached stages. When DVC restores a stage's outputs from its cache, the stage's command does not
run, so it logs nothing. Therefore every stage also writes its tracking record (params, metrics,
tags, artifact paths, its run id) as `results/records/<stage>@<variant>.json`, a DVC output of the
stage, so DVC caches and restores it with the results. The report stage depends on every record
and runs whenever anything changed; it calls `reattach_records`, which gives every record whose
stage has no child run under the current parent a child run tagged `vld.restored=true` (with
`vld.original_run_id`, the metric histories copied from the original run when it is in the same
store, and the artifacts). The MLflow view of the current parent is thus always complete.

Set VLD_TRACKING=off (or 0, false, no) to run without MLflow (records are still written).
mlflow is imported lazily, after the probe. This module imports nothing from
vld.pipeline.params (params imports the stages' helpers, not the other way round).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from vld.atomic import check_writable, write_json
from vld.errors import UserError, fail

RECORDS_DIR = Path("results/records")
RECORD_SCHEMA = "vld.tracking/1"
MAX_PARAM_LEN = 6000
OFF_HINT = "set VLD_TRACKING=off to run without MLflow (records are still written)"
HTTP_PROBE_TIMEOUT_S = 3.0


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


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- ranks

def is_global_zero() -> bool:
    """True except in the extra processes of a multi-process (DDP) run."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").strip():
            return int(os.environ[name]) == 0
    return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0 and int(os.environ.get("NODE_RANK", "0") or 0) == 0


class NullRun:
    """Stands in for a StageRun on the non-zero ranks of a DDP run (they log nothing)."""

    run_id = None

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@contextlib.contextmanager
def tracked(pipeline, stage: str, variant: str | None, params: dict, tags: dict) -> Iterator:
    """A stage's tracking on rank 0 (a StageRun), a NullRun elsewhere."""
    if not is_global_zero():
        yield NullRun()
        return
    with stage_run(pipeline, stage, variant, params, tags) as run:
        yield run


# ----------------------------------------------------------------------------- the store

def _where(uri: str) -> str:
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


def probe_store(uri: str | None = None) -> None:
    """Check the tracking store cheaply, before any compute; a bad one is one UserError line."""
    uri = uri or tracking_uri()
    where = _where(uri)
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None:
            _probe_sqlite(path, where)
    elif scheme == "file" or not scheme:  # a file: URI or a bare path: MLflow's file store
        allowed = os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("1", "true", "yes")
        if not allowed:
            fail(where, "MLflow's file store is in maintenance mode and refuses to start; use"
                        f" sqlite:///{store_root() / 'mlflow.db'} (or unset MLFLOW_TRACKING_URI),"
                        f" set MLFLOW_ALLOW_FILE_STORE=true, or {OFF_HINT}")
        from urllib.parse import urlsplit

        directory = Path(urlsplit(uri).path if scheme == "file" else uri)
        try:
            check_writable(directory / "meta.yaml")
        except UserError as err:
            fail(where, f"{err}; {OFF_HINT}")
    elif scheme in ("http", "https"):
        _probe_http(uri, where)


def _probe_sqlite(path: Path, where: str) -> None:
    import sqlite3

    directory = path.parent
    if not directory.is_dir():
        fail(where, f"the directory {directory} does not exist; create it or {OFF_HINT}")
    try:
        check_writable(path)  # sqlite writes its journal beside the database
    except UserError as err:
        fail(where, f"{err}; fix the permissions or {OFF_HINT}")
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
        fail(where, f"{path} cannot be used as an sqlite database ({err}); move it away or {OFF_HINT}")
    except sqlite3.Error as err:
        fail(where, f"{path} cannot be used as an sqlite database ({err}); move it away or {OFF_HINT}")


def _probe_http(uri: str, where: str) -> None:
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
        fail(where, f"no MLflow server answers at {host}:{port} ({err.strerror or err});"
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
        fail(where, f"{host}:{port} does not answer as an MLflow server ({reason} from {health});"
                    f" point MLFLOW_TRACKING_URI at a running server, or {OFF_HINT}")


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


def _client(root: Path):
    import logging

    uri = tracking_uri(root)
    probe_store(uri)
    # a server that answered the probe and then goes away: fail in seconds, not MLflow's
    # default of 7 retries with exponential backoff (minutes); a user's own settings win
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow
    from mlflow.tracking import MlflowClient

    # Alembic prints every migration of a fresh store at INFO; keep stage logs readable.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):  # a fresh store is created (schema migrated) by one process at a time
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    return client


@contextlib.contextmanager
def _store_errors(uri: str) -> Iterator[None]:
    """MLflow's own failures (after the probe passed) as one line naming the store."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # MlflowException, sqlalchemy, requests: all one line here
        lines = str(err).strip().splitlines() or [""]
        fail(_where(uri), f"the tracking store failed ({type(err).__name__}: {lines[0][:300]}); {OFF_HINT}")


def git_commit(root: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(root), capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "none"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "none"


def record_path(stage: str, variant: str | None, root: str | Path | None = None) -> Path:
    return repo_root(root) / RECORDS_DIR / f"{stage_key(stage, variant)}.json"


def stage_key(stage: str, variant: str | None) -> str:
    return stage if not variant else f"{stage}@{variant}"


def _experiment_id(client, profile: str, root: Path) -> str:
    experiment = client.get_experiment_by_name(profile)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    db = sqlite_path(tracking_uri(root))
    if db is not None:  # artifacts beside the store, so every checkout sharing it finds them
        location = (db.parent / "mlruns" / profile).as_uri()
    try:
        return client.create_experiment(profile, artifact_location=location)
    except Exception:  # created meanwhile by another process
        return client.get_experiment_by_name(profile).experiment_id


def pipeline_tags(profile: str, params_sha256: str, commit: str) -> dict[str, str]:
    return {"vld.role": "pipeline", "vld.profile": profile, "vld.params_sha256": params_sha256,
            "vld.git_commit": commit}


def _find_or_create_parent(client, experiment_id: str, tags: dict[str, str]) -> str:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    found = client.search_runs([experiment_id], filter_string=query, max_results=1,
                               order_by=["attributes.start_time DESC"])
    if found:
        return found[0].info.run_id
    name = f"{tags['vld.profile']} params {tags['vld.params_sha256'][:8]} @ {tags['vld.git_commit'][:8]}"
    run = client.create_run(experiment_id, tags={**tags, "mlflow.runName": name}, run_name=name)
    return run.info.run_id


def _clean_params(params: dict[str, Any]) -> dict[str, str]:
    return {str(k)[:250]: ("None" if v is None else str(v))[:MAX_PARAM_LEN] for k, v in params.items()}


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
            out[str(key)] = float(value)
    return out


# ----------------------------------------------------------------------------- run states

def _start_ticks(pid: int | str) -> str:
    """The start time of process `pid` in clock ticks since boot (Linux), "0" if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[-1].split()[19]


def process_tag() -> str:
    """This process as `host:pid:start` (the start time tells a reused pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks('self')}"


def process_alive(tag: str) -> bool:
    """Whether the process of a `vld.process` tag still runs; True when it cannot be known
    (another host, or a tag this code did not write)."""
    try:
        host, pid, start = tag.rsplit(":", 2)
        pid_number = int(pid)
    except ValueError:
        return True
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid_number, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_ticks(pid_number)
    return start == "0" or now == "0" or now == start


def _search_all(client, experiment_id: str, query: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def close_stale_runs(client, experiment_id: str) -> list[str]:
    """Close as KILLED every RUNNING child run whose process is gone from this host, then
    settle every RUNNING parent. Returns the closed run ids."""
    closed = []
    running = _search_all(client, experiment_id, "attributes.status = 'RUNNING'")
    parents = set()
    for run in running:
        tags = run.data.tags
        if tags.get("vld.role") == "pipeline":
            parents.add(run.info.run_id)
        elif "vld.process" in tags and not process_alive(tags["vld.process"]):
            client.set_tag(run.info.run_id, "vld.end_reason", "its process was gone (killed); closed by a later stage")
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
            if tags.get("mlflow.parentRunId"):
                parents.add(tags["mlflow.parentRunId"])
    for parent in parents:
        settle_parent(client, experiment_id, parent)
    return closed


def pipeline_state(children: list) -> tuple[str, str]:
    """(MLflow status, vld.pipeline_state) of a parent from its child runs (see the module doc)."""
    if any(r.info.status == "RUNNING" and process_alive(r.data.tags.get("vld.process", "")) for r in children):
        return "RUNNING", "running"
    if any(r.data.tags.get("vld.stage") == "report" and r.info.status == "FINISHED" for r in children):
        return "FINISHED", "complete"
    latest: dict[str, Any] = {}
    for run in sorted(children, key=lambda r: r.info.start_time or 0):
        latest[run.data.tags.get("vld.stage_key", run.info.run_id)] = run
    if any(r.info.status in ("FAILED", "KILLED") for r in latest.values()):
        return "FAILED", "failed"
    return "FINISHED", "partial"


def settle_parent(client, experiment_id: str, parent_run_id: str) -> str:
    """Set the parent's status from its children; returns the status."""
    children = _search_all(client, experiment_id, f"tags.`mlflow.parentRunId` = '{parent_run_id}'")
    status, state = pipeline_state(children)
    client.set_tag(parent_run_id, "vld.pipeline_state", state)
    if status == "RUNNING":
        client.update_run(parent_run_id, status="RUNNING")
    else:
        client.set_terminated(parent_run_id, status)
    return status


class StageRun:
    """The tracking of one stage execution: an MLflow child run plus a JSON record."""

    def __init__(self, pipeline, stage: str, variant: str | None = None,
                 params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
                 root: str | Path | None = None):
        self.started = time.time()
        self.root = repo_root(root)
        self.profile = pipeline.profile
        self.stage, self.variant = stage, variant
        self.key = stage_key(stage, variant)
        self.params: dict[str, Any] = dict(params or {})
        self.metrics: dict[str, float] = {}
        self.params_sha256 = file_sha256(pipeline.path)
        self.commit = git_commit(self.root)
        self.tags: dict[str, str] = {
            "vld.stage": stage, "vld.variant": variant or "", "vld.stage_key": self.key,
            "vld.profile": self.profile, "vld.params_sha256": self.params_sha256,
            "vld.git_commit": self.commit, "vld.restored": "false",
        }
        self.tags.update({k: str(v) for k, v in (tags or {}).items()})
        self.artifacts: list[str] = []  # paths relative to the repo root
        self.run_id: str | None = None
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self._client = None
        self.uri = tracking_uri(self.root)
        check_writable(record_path(stage, variant, self.root))  # before any compute
        if enabled():
            with _store_errors(self.uri):
                self._start()

    # -- MLflow
    def _start(self) -> None:
        client = _client(self.root)
        self.experiment_id = _experiment_id(client, self.profile, self.root)
        close_stale_runs(client, self.experiment_id)
        self.parent_run_id = _find_or_create_parent(
            client, self.experiment_id, pipeline_tags(self.profile, self.params_sha256, self.commit))
        client.update_run(self.parent_run_id, status="RUNNING")
        client.set_tag(self.parent_run_id, "vld.pipeline_state", "running")
        run = client.create_run(self.experiment_id, run_name=self.key,
                                tags={**self.tags, "mlflow.parentRunId": self.parent_run_id,
                                      "mlflow.runName": self.key, "vld.process": process_tag()})
        self.run_id = run.info.run_id
        self._client = client
        if self.params:
            self._log_params(self.params)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in _clean_params(params).items()]
        with _store_errors(self.uri):
            for i in range(0, len(items), 90):
                self._client.log_batch(self.run_id, params=items[i:i + 90])

    def log_params(self, params: dict[str, Any]) -> None:
        new = {k: v for k, v in params.items() if k not in self.params}
        self.params.update(new)
        if self._client and new:
            self._log_params(new)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = _numeric(metrics)
        self.metrics.update(values)
        if self._client and values:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            items = [Metric(k, v, now, step or 0) for k, v in values.items()]
            with _store_errors(self.uri):
                for i in range(0, len(items), 500):
                    self._client.log_batch(self.run_id, metrics=items[i:i + 500])

    def set_tags(self, tags: dict[str, Any]) -> None:
        values = {k: str(v) for k, v in tags.items()}
        self.tags.update(values)
        if self._client:
            with _store_errors(self.uri):
                for k, v in values.items():
                    self._client.set_tag(self.run_id, k, v)

    def add_artifact(self, path: str | Path) -> None:
        """Register a file or directory (logged when the stage finishes, from its final place)."""
        path = Path(path)
        rel = path.resolve().relative_to(self.root) if path.is_absolute() else path
        self.artifacts.append(str(rel))

    def lightning_logger(self):
        """An MLFlowLogger writing the training curve into this child run (None if disabled)."""
        if not self.run_id:
            return None
        logger_class = __getattr__("StageLogger")
        return logger_class(experiment_name=self.profile, tracking_uri=self.uri, run_id=self.run_id)

    # -- record
    def record(self) -> dict[str, Any]:
        return {
            "schema": RECORD_SCHEMA, "stage": self.stage, "variant": self.variant, "stage_key": self.key,
            "profile": self.profile, "params": self.params, "metrics": self.metrics, "tags": self.tags,
            "artifacts": self.artifacts, "run_id": self.run_id, "parent_run_id": self.parent_run_id,
            "tracking_uri": self.uri if self.run_id else None,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def finish(self, record_file: str | Path | None = None) -> dict[str, Any]:
        """Write the record (default results/records/<key>.json), log artifacts, end the run."""
        # wall time from validation to the end (the ~10 s of interpreter start and imports before it are not in it)
        self.log_metrics({"stage_wall_s": time.time() - self.started})
        record = self.record()
        write_json(record_file or record_path(self.stage, self.variant, self.root), record)
        if self._client:
            with _store_errors(self.uri):
                _log_artifacts(self._client, self.run_id, self.root, self.artifacts)
                self._client.set_terminated(self.run_id, "FINISHED")
                settle_parent(self._client, self.experiment_id, self.parent_run_id)
        return record

    def fail(self, status: str = "FAILED") -> None:
        """End the child run as FAILED (or KILLED) and settle the parent; never raises."""
        if self._client:
            with contextlib.suppress(Exception):
                self._client.set_terminated(self.run_id, status)
            with contextlib.suppress(Exception):
                settle_parent(self._client, self.experiment_id, self.parent_run_id)


def _stage_logger_class():
    from lightning.pytorch.loggers import MLFlowLogger

    class StageLogger(MLFlowLogger):
        """Lightning's MLFlowLogger that leaves the run's end to the stage: Lightning would mark
        the run FINISHED when training ends, while the stage still has its outputs to write."""

        def finalize(self, status: str = "success") -> None:
            return None

    StageLogger.__module__, StageLogger.__qualname__ = __name__, "StageLogger"
    return StageLogger


def __getattr__(name: str):
    # StageLogger is built on first use (it imports lightning); a module attribute so that
    # it pickles (ddp_spawn) by name
    if name == "StageLogger":
        if name not in globals():
            globals()[name] = _stage_logger_class()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _log_artifacts(client, run_id: str, root: Path, paths: list[str]) -> None:
    for rel in paths:
        path = root / rel
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=Path(rel).name)
        elif path.is_file():
            client.log_artifact(run_id, str(path), artifact_path=str(Path(rel).parent))


@contextlib.contextmanager
def stage_run(pipeline, stage: str, variant: str | None = None, params: dict[str, Any] | None = None,
              tags: dict[str, Any] | None = None) -> Iterator[StageRun]:
    """Track one stage: yields a StageRun; on success the caller calls `run.finish()`."""
    run = StageRun(pipeline, stage, variant, params, tags)
    try:
        yield run
    except BaseException as err:
        run.fail("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise


def read_records(root: str | Path | None = None) -> list[dict[str, Any]]:
    directory = repo_root(root) / RECORDS_DIR
    records = []
    for file in sorted(directory.rglob("*.json")):  # a variant's seeds: <stage>@<variant>/seed<s>.json
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("schema") == RECORD_SCHEMA:
            records.append(record)
    return records


def reattach_records(run: StageRun, records: list[dict[str, Any]]) -> list[str]:
    """Give every record without a child run under `run`'s parent a restored child run.

    Returns the stage keys that were re-attached.
    """
    if not run._client or not records:
        return []
    client = run._client
    query = f"tags.`mlflow.parentRunId` = '{run.parent_run_id}'"
    present: set[str] = set()
    page_token = None
    while True:
        page = client.search_runs([run.experiment_id], filter_string=query, max_results=1000,
                                  page_token=page_token)
        present.update(r.data.tags.get("vld.stage_key", "") for r in page)
        page_token = page.token
        if not page_token:
            break
    restored = []
    for record in records:
        key = record.get("stage_key")
        if not key or key in present:
            continue
        tags = {k: str(v) for k, v in (record.get("tags") or {}).items()}
        tags.update({"vld.restored": "true", "vld.original_run_id": str(record.get("run_id")),
                     "vld.original_params_sha256": tags.get("vld.params_sha256", ""),
                     "vld.params_sha256": run.params_sha256, "vld.git_commit": run.commit,
                     "mlflow.parentRunId": run.parent_run_id, "mlflow.runName": key})
        child = client.create_run(run.experiment_id, run_name=key, tags=tags).info.run_id
        from mlflow.entities import Metric, Param

        params = [Param(k, v) for k, v in _clean_params(record.get("params") or {}).items()]
        for i in range(0, len(params), 90):
            client.log_batch(child, params=params[i:i + 90])
        metrics = _copied_history(client, record.get("run_id"), record.get("tracking_uri"), run)
        finals = _numeric(record.get("metrics") or {})
        now = int(time.time() * 1000)
        metrics += [Metric(k, v, now, 0) for k, v in finals.items() if k not in {m.key for m in metrics}]
        for i in range(0, len(metrics), 500):
            client.log_batch(child, metrics=metrics[i:i + 500])
        _log_artifacts(client, child, run.root, record.get("artifacts") or [])
        client.set_terminated(child, "FINISHED")
        restored.append(key)
    return restored


def _copied_history(client, run_id, uri, run: StageRun) -> list:
    """The full metric histories of the original run, when it lives in this store."""
    if not run_id or uri != tracking_uri(run.root):
        return []
    try:
        original = client.get_run(run_id)
    except Exception:
        return []
    metrics = []
    for key in original.data.metrics:
        metrics.extend(client.get_metric_history(run_id, key))
    return metrics


def finish_pipeline(run: StageRun, pipeline=None) -> None:
    """Log the resolved config on the parent run and mark it finished (the report is last)."""
    if not run._client:
        return
    if pipeline is not None:
        import tempfile

        resolved = {family: {name: v.to_dict() for name, v in table.items()}
                    for family, table in pipeline.variants.items()}
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "params.yaml").write_bytes(Path(pipeline.path).read_bytes())
            (Path(tmp) / "resolved_variants.json").write_text(json.dumps(resolved, indent=1, sort_keys=True))
            run._client.log_artifacts(run.parent_run_id, tmp, artifact_path="config")
    run._client.set_tag(run.parent_run_id, "vld.pipeline_state", "complete")
    run._client.set_terminated(run.parent_run_id, "FINISHED")


__all__ = ["NullRun", "StageRun", "close_stale_runs", "enabled", "file_sha256", "finish_pipeline", "git_commit",
           "is_global_zero", "pipeline_state", "probe_store", "process_alive", "process_tag", "reattach_records",
           "read_records", "record_path", "repo_root", "settle_parent", "stage_key", "stage_run", "store_lock",
           "store_root", "tracked", "tracking_uri"]
