"""MLflow tracking of the pipeline: one experiment per profile, a parent run per pipeline, a
child run per stage and variant.

Store: sqlite `<repo>/mlflow.db` (artifacts under `<repo>/mlruns/`) unless MLFLOW_TRACKING_URI
is set. `<repo>` is the directory holding dvc.yaml (DVC runs every stage there).

Parent run: found or created by its tags `vld.profile`, `vld.params_sha256` (of params.yaml)
and `vld.git_commit`; every stage process attaches its child with `mlflow.parentRunId`. So one
version of params.yaml at one commit is one parent run, whichever stages ran for it.

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

Set VLD_TRACKING=0 to disable MLflow (records are still written). mlflow is imported lazily.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from vld.atomic import write_json

RECORDS_DIR = Path("results/records")
RECORD_SCHEMA = "vld.tracking/1"
MAX_PARAM_LEN = 6000


def enabled() -> bool:
    return os.environ.get("VLD_TRACKING", "1").strip().lower() not in ("0", "false", "no", "off")


def repo_root(start: str | Path | None = None) -> Path:
    """The directory holding dvc.yaml (DVC's working directory for stages), else the cwd."""
    here = Path(start or os.getcwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


def tracking_uri(root: str | Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    return f"sqlite:///{repo_root(root) / 'mlflow.db'}"


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


def _client(root: Path):
    import logging

    import mlflow
    from mlflow.tracking import MlflowClient

    # Alembic prints every migration of a fresh store at INFO; keep stage logs readable.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client, profile: str, root: Path) -> str:
    experiment = client.get_experiment_by_name(profile)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if tracking_uri(root).startswith("sqlite:"):
        location = (root / "mlruns" / profile).as_uri()
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


class StageRun:
    """The tracking of one stage execution: an MLflow child run plus a JSON record."""

    def __init__(self, pipeline, stage: str, variant: str | None = None,
                 params: dict[str, Any] | None = None, tags: dict[str, Any] | None = None,
                 root: str | Path | None = None):
        from vld.pipeline.params import file_sha256

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
        if enabled():
            self._start()

    # -- MLflow
    def _start(self) -> None:
        client = _client(self.root)
        self.experiment_id = _experiment_id(client, self.profile, self.root)
        self.parent_run_id = _find_or_create_parent(
            client, self.experiment_id, pipeline_tags(self.profile, self.params_sha256, self.commit))
        client.update_run(self.parent_run_id, status="RUNNING")
        run = client.create_run(self.experiment_id, run_name=self.key,
                                tags={**self.tags, "mlflow.parentRunId": self.parent_run_id,
                                      "mlflow.runName": self.key})
        self.run_id = run.info.run_id
        self._client = client
        if self.params:
            self._log_params(self.params)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in _clean_params(params).items()]
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
            for i in range(0, len(items), 500):
                self._client.log_batch(self.run_id, metrics=items[i:i + 500])

    def set_tags(self, tags: dict[str, Any]) -> None:
        values = {k: str(v) for k, v in tags.items()}
        self.tags.update(values)
        if self._client:
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
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name=self.profile, tracking_uri=tracking_uri(self.root),
                            run_id=self.run_id)

    # -- record
    def record(self) -> dict[str, Any]:
        return {
            "schema": RECORD_SCHEMA, "stage": self.stage, "variant": self.variant, "stage_key": self.key,
            "profile": self.profile, "params": self.params, "metrics": self.metrics, "tags": self.tags,
            "artifacts": self.artifacts, "run_id": self.run_id, "parent_run_id": self.parent_run_id,
            "tracking_uri": tracking_uri(self.root) if self.run_id else None,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def finish(self, record_file: str | Path | None = None) -> dict[str, Any]:
        """Write the record (default results/records/<key>.json), log artifacts, end the run."""
        # wall time from validation to the end (the ~10 s of interpreter start and imports before it are not in it)
        self.log_metrics({"stage_wall_s": time.time() - self.started})
        record = self.record()
        write_json(record_file or record_path(self.stage, self.variant, self.root), record)
        if self._client:
            _log_artifacts(self._client, self.run_id, self.root, self.artifacts)
            self._client.set_terminated(self.run_id, "FINISHED")
        return record

    def fail(self) -> None:
        if self._client:
            with contextlib.suppress(Exception):
                self._client.set_terminated(self.run_id, "FAILED")
                self._client.update_run(self.parent_run_id, status="FAILED")


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
    except BaseException:
        run.fail()
        raise


def read_records(root: str | Path | None = None) -> list[dict[str, Any]]:
    directory = repo_root(root) / RECORDS_DIR
    records = []
    for file in sorted(directory.glob("*.json")):
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
    run._client.update_run(run.parent_run_id, status="FINISHED")


__all__ = ["StageRun", "enabled", "finish_pipeline", "git_commit", "reattach_records", "read_records",
           "record_path", "repo_root", "stage_key", "stage_run", "tracking_uri"]
