"""MLflow runs and their states: one experiment per profile, a parent run per pipeline, a child
run per stage and variant, and the batched writes into them.

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

Every function here takes the MlflowClient of an opened store (vld.pipeline.tracking.store).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vld.pipeline.tracking.store import sqlite_path, tracking_uri

MAX_PARAM_LEN = 6000
MAX_NAME_LEN = 250  # MLflow's limit on a param or metric name
PARAMS_PER_BATCH = 90  # under MLflow's 100 params per log_batch
METRICS_PER_BATCH = 500  # under its 1000 metrics


# ----------------------------------------------------------------------------- processes

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


# ----------------------------------------------------------------------------- states

def search_all(client, experiment_id: str, query: str) -> list:
    """Every run of the experiment matching `query` (all pages)."""
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
    running = search_all(client, experiment_id, "attributes.status = 'RUNNING'")
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


def child_runs(client, experiment_id: str, parent_run_id: str) -> list:
    return search_all(client, experiment_id, f"tags.`mlflow.parentRunId` = '{parent_run_id}'")


def settle_parent(client, experiment_id: str, parent_run_id: str) -> str:
    """Set the parent's status from its children; returns the status."""
    status, state = pipeline_state(child_runs(client, experiment_id, parent_run_id))
    client.set_tag(parent_run_id, "vld.pipeline_state", state)
    if status == "RUNNING":
        client.update_run(parent_run_id, status="RUNNING")
    else:
        client.set_terminated(parent_run_id, status)
    return status


# ----------------------------------------------------------------------------- the experiment and the parent

# MLflow 3's UI opens an experiment by its kind: without it, on the GenAI overview (traces)
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def open_experiment(client, profile: str, root: Path) -> str:
    """The id of the profile's experiment (restored if deleted, created if missing), marked
    as a model-training experiment."""
    experiment = client.get_experiment_by_name(profile)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        for key, value in EXPERIMENT_KIND.items():
            if experiment.tags.get(key) != value:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id
    location = None
    db = sqlite_path(tracking_uri(root))
    if db is not None:  # artifacts beside the store, so every checkout sharing it finds them
        location = (db.parent / "mlruns" / profile).as_uri()
    try:
        return client.create_experiment(profile, artifact_location=location, tags=EXPERIMENT_KIND)
    except Exception:  # created meanwhile by another process
        return client.get_experiment_by_name(profile).experiment_id


def pipeline_tags(profile: str, params_sha256: str, commit: str) -> dict[str, str]:
    return {"vld.role": "pipeline", "vld.profile": profile, "vld.params_sha256": params_sha256,
            "vld.git_commit": commit}


@dataclass(frozen=True)
class ParentRun:
    """A pipeline's parent run in an opened store: the client, its experiment and the run."""

    client: Any  # mlflow.tracking.MlflowClient
    experiment_id: str
    run_id: str

    @classmethod
    def find_or_create(cls, client, experiment_id: str, tags: dict[str, str]) -> "ParentRun":
        """The latest parent run carrying `tags` (pipeline_tags), else a new one."""
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = client.search_runs([experiment_id], filter_string=query, max_results=1,
                                   order_by=["attributes.start_time DESC"])
        if found:
            return cls(client, experiment_id, found[0].info.run_id)
        name = f"{tags['vld.profile']} params {tags['vld.params_sha256'][:8]} @ {tags['vld.git_commit'][:8]}"
        run = client.create_run(experiment_id, tags={**tags, "mlflow.runName": name}, run_name=name)
        return cls(client, experiment_id, run.info.run_id)

    def children(self) -> list:
        return child_runs(self.client, self.experiment_id, self.run_id)

    def start_child(self, key: str, tags: dict[str, str]) -> str:
        """A new child run named `key`; returns its id."""
        tags = {**tags, "mlflow.parentRunId": self.run_id, "mlflow.runName": key}
        return self.client.create_run(self.experiment_id, run_name=key, tags=tags).info.run_id

    def mark_running(self) -> None:
        self.client.update_run(self.run_id, status="RUNNING")
        self.client.set_tag(self.run_id, "vld.pipeline_state", "running")

    def settle(self) -> str:
        return settle_parent(self.client, self.experiment_id, self.run_id)

    def complete(self, config_files: dict[str, bytes]) -> None:
        """Log `config_files` (name: content) under the run's `config/` and mark it complete."""
        if config_files:
            with tempfile.TemporaryDirectory() as tmp:
                for name, content in config_files.items():
                    (Path(tmp) / name).write_bytes(content)
                self.client.log_artifacts(self.run_id, tmp, artifact_path="config")
        self.client.set_tag(self.run_id, "vld.pipeline_state", "complete")
        self.client.set_terminated(self.run_id, "FINISHED")


# ----------------------------------------------------------------------------- writes into a run

REFUSED_IN_NAMES = re.compile(r"[^A-Za-z0-9_\-. :/]")  # what MLflow refuses in a param or metric name


def mlflow_name(key) -> str:
    """`key` as a param or metric name MLflow accepts: the characters it refuses (e.g. a recipe
    label's parentheses and '=') become '_', and the name is cut to its length limit. The same
    key in metrics.json keeps its characters."""
    return REFUSED_IN_NAMES.sub("_", str(key))[:MAX_NAME_LEN]


def mlflow_names(keys) -> dict[Any, str]:
    """mlflow_name of each key, made unique: where two keys would share a name (they differ only
    in refused characters or beyond the length limit), every one of them that the name does not
    spell exactly gets the first 8 hex digits of its key's sha256 appended. Independent of the
    keys' order, so a run's names do not depend on how its metrics were assembled."""
    groups: dict[str, list] = {}
    for key in keys:
        groups.setdefault(mlflow_name(key), []).append(key)
    names = {}
    for name, group in groups.items():
        for key in group:
            if len(group) == 1 or str(key) == name:
                names[key] = name
            else:
                digest = hashlib.sha256(str(key).encode()).hexdigest()[:8]
                names[key] = f"{name[:MAX_NAME_LEN - 9]}_{digest}"
    return names


def clean_params(params: dict[str, Any]) -> dict[str, str]:
    """Params as MLflow takes them: names it accepts (mlflow_names), string values cut to its limit."""
    names = mlflow_names(params)
    return {names[k]: ("None" if v is None else str(v))[:MAX_PARAM_LEN] for k, v in params.items()}


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers (booleans as 0/1) among `metrics`, under names MLflow accepts
    (mlflow_names): what MLflow can log."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and value == value and abs(value) != float("inf"):
            out[key] = float(value)
    names = mlflow_names(out)
    return {names[k]: v for k, v in out.items()}


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in clean_params(params).items()]
    for i in range(0, len(items), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[i:i + PARAMS_PER_BATCH])


def metric_entities(values: dict[str, float], step: int = 0, model_id: str | None = None) -> list:
    """mlflow Metric entities of `values`, stamped now (and of the logged model `model_id`)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, v, now, step, model_id=model_id) for k, v in values.items()]


def log_metric_entities(client, run_id: str, metrics: list) -> None:
    for i in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + METRICS_PER_BATCH])


def log_artifacts(client, run_id: str, root: Path, paths: list[str]) -> None:
    """Log files and directories (paths relative to `root`; missing ones are skipped)."""
    for rel in paths:
        path = root / rel
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=Path(rel).name)
        elif path.is_file():
            client.log_artifact(run_id, str(path), artifact_path=str(Path(rel).parent))
