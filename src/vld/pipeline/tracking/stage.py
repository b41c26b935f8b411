"""The tracking of one stage execution (`StageRun`): an MLflow child run `<stage>@<variant>`
under the pipeline's parent, plus the JSON record every stage writes (vld.pipeline.tracking.records).

The child holds params (the variant's resolved settings), metrics (final values; the training
curve through Lightning's MLFlowLogger bound to the same run id), tags (vld.stage, vld.variant,
vld.pattern, vld.k, vld.git_commit, vld.machine.<field> (the CPU and torch the stage ran on),
vld.data.<name>.sha256, ...) and artifacts (result files,
tables, figures, the resolved config), dataset inputs and logged models (vld.pipeline.tracking.lineage).
With VLD_TRACKING off only the record is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

from vld.atomic import check_writable, write_json
from vld.machine import describe_machine
from vld.pipeline.tracking import lineage, runs
from vld.pipeline.tracking.records import RECORD_SCHEMA, record_path, stage_key
from vld.pipeline.tracking.store import enabled, open_client, repo_root, store_errors, tracking_uri


def machine_tags(machine: dict) -> dict[str, str]:
    """vld.machine.<field> tags of a vld.machine record (lists space-separated; None and [] left out),
    so runs can be filtered by the CPU they ran on. A record gathered over unlike ranks
    (vld.machine.across_ranks) keeps rank 0's fields and tags `ranks` with their count."""
    def value(key, field):
        if key == "ranks":
            return str(len(field))
        return " ".join(field) if isinstance(field, list) else str(field)

    return {f"vld.machine.{key}": value(key, field) for key, field in machine.items() if field not in (None, [])}


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def git_commit(root: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(root), capture_output=True,
                             text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "none"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "none"


def is_global_zero() -> bool:
    """True except in the extra processes of a multi-process (DDP) run."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").strip():
            return int(os.environ[name]) == 0
    return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0 and int(os.environ.get("NODE_RANK", "0") or 0) == 0


class StageRun:
    """The tracking of one stage execution: an MLflow child run plus a JSON record.

    `parent` (a runs.ParentRun) and `run_id` are None when tracking is off."""

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
            "vld.git_commit": self.commit, "vld.restored": "false", **machine_tags(describe_machine()),
        }
        self.tags.update({k: str(v) for k, v in (tags or {}).items()})
        self.artifacts: list[str] = []  # paths relative to the repo root
        self.inputs: list[dict[str, Any]] = []  # lineage.dataset_entry / stream_entry
        self.models: list[dict[str, Any]] = []  # lineage.model_entry, with its model_id once logged
        self.evaluated_model: str | None = None  # the logged model this run measures (evaluate_model)
        self.run_id: str | None = None
        self.parent: runs.ParentRun | None = None
        self.uri = tracking_uri(self.root)
        check_writable(record_path(stage, variant, self.root))  # before any compute
        if enabled():
            with store_errors(self.uri):
                self._start()

    @property
    def parent_run_id(self) -> str | None:
        return self.parent.run_id if self.parent else None

    def _start(self) -> None:
        client = open_client(self.root)
        experiment = runs.open_experiment(client, self.profile, self.root)
        runs.close_stale_runs(client, experiment)
        parent = runs.ParentRun.find_or_create(
            client, experiment, runs.pipeline_tags(self.profile, self.params_sha256, self.commit))
        parent.mark_running()
        self.run_id = parent.start_child(self.key, {**self.tags, "vld.process": runs.process_tag()})
        self.parent = parent
        if self.params:
            self._log_params(self.params)

    def _log_params(self, params: dict[str, Any]) -> None:
        with store_errors(self.uri):
            runs.log_params(self.parent.client, self.run_id, params)

    def log_params(self, params: dict[str, Any]) -> None:
        new = {k: v for k, v in params.items() if k not in self.params}
        self.params.update(new)
        if self.parent and new:
            self._log_params(new)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None, of_model: bool = True) -> None:
        """Log finite numbers; `of_model`: also as metrics of the evaluated model (evaluate_model)."""
        values = runs.numeric(metrics)
        self.metrics.update(values)
        if self.parent and values:
            model_id = self.evaluated_model if of_model else None
            with store_errors(self.uri):
                runs.log_metric_entities(self.parent.client, self.run_id, runs.metric_entities(values, step or 0, model_id))

    def log_curve(self, key: str, values: list[float], every: int = 1) -> None:
        """A whole training curve in one batched write: values[i] at step i (0-based, as
        Lightning logs it), every `every` steps and the last (a stacked run's seeds log theirs
        after training, where one call per step would be one store transaction each)."""
        steps = [i for i in range(len(values)) if i % max(1, every) == 0 or i == len(values) - 1]
        if self.parent and steps:
            entities = [e for i in steps for e in runs.metric_entities({key: float(values[i])}, i)]
            with store_errors(self.uri):
                runs.log_metric_entities(self.parent.client, self.run_id, entities)

    def log_points(self, key: str, steps: list[int], values: list[float]) -> None:
        """A stepped metric in one batched write: values[i] at steps[i] (a learning curve)."""
        if self.parent and steps:
            entities = [e for step, value in zip(steps, values) for e in runs.metric_entities({key: float(value)}, step)]
            with store_errors(self.uri):
                runs.log_metric_entities(self.parent.client, self.run_id, entities)

    def set_tags(self, tags: dict[str, Any]) -> None:
        values = {k: str(v) for k, v in tags.items()}
        self.tags.update(values)
        if self.parent:
            with store_errors(self.uri):
                for k, v in values.items():
                    self.parent.client.set_tag(self.run_id, k, v)

    def log_datasets(self, entries: list[dict[str, Any]]) -> None:
        """The datasets the stage read, as MLflow dataset inputs (by reference)."""
        self.inputs.extend(entries)
        if self.parent and entries:
            with store_errors(self.uri):
                lineage.log_datasets(self.parent.client, self.run_id, entries)

    def log_model(self, entry: dict[str, Any]) -> None:
        """A trained model (lineage.model_entry) as a logged model of this run."""
        self.models.append(entry)
        if self.parent:
            with store_errors(self.uri):
                entry["model_id"] = lineage.log_model(self.parent.client, self.parent.experiment_id,
                                                      self.run_id, entry)

    def evaluate_model(self, training_record: str | Path) -> None:
        """Link the logged model of a training stage's record as this run's model input; the
        metrics logged afterwards are that model's metrics too (its page shows them)."""
        model_id = lineage.recorded_model_id(training_record)
        if self.parent and model_id:
            with store_errors(self.uri):
                if lineage.link_model_input(self.parent.client, self.run_id, model_id):
                    self.evaluated_model = model_id

    def add_artifact(self, path: str | Path) -> None:
        """Register a file or directory (logged when the stage finishes, from its final place)."""
        path = Path(path)
        rel = path.resolve().relative_to(self.root) if path.is_absolute() else path
        self.artifacts.append(str(rel))

    def lightning_logger(self):
        """An MLFlowLogger writing the training curve into this child run (None if disabled)."""
        if not self.run_id:
            return None
        from vld.pipeline.tracking.logger import StageLogger  # imports lightning: only here

        return StageLogger(experiment_name=self.profile, tracking_uri=self.uri, run_id=self.run_id)

    def record(self) -> dict[str, Any]:
        return {
            "schema": RECORD_SCHEMA, "stage": self.stage, "variant": self.variant, "stage_key": self.key,
            "profile": self.profile, "params": self.params, "metrics": self.metrics, "tags": self.tags,
            "artifacts": self.artifacts, "inputs": self.inputs, "models": self.models,
            "evaluated_model": self.evaluated_model, "run_id": self.run_id, "parent_run_id": self.parent_run_id,
            "tracking_uri": self.uri if self.run_id else None,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def finish(self, record_file: str | Path | None = None) -> dict[str, Any]:
        """Write the record (default results/records/<key>.json), log artifacts, end the run."""
        # wall time from validation to the end (the ~10 s of interpreter start and imports before it are not in it)
        self.log_metrics({"stage_wall_s": time.time() - self.started}, of_model=False)
        record = self.record()
        write_json(record_file or record_path(self.stage, self.variant, self.root), record)
        if self.parent:
            with store_errors(self.uri):
                runs.log_artifacts(self.parent.client, self.run_id, self.root, self.artifacts)
                self.parent.client.set_terminated(self.run_id, "FINISHED")
                self.parent.settle()
        return record

    def fail(self, status: str = "FAILED") -> None:
        """End the child run as FAILED (or KILLED) and settle the parent; never raises."""
        if self.parent:
            with contextlib.suppress(Exception):
                self.parent.client.set_terminated(self.run_id, status)
            with contextlib.suppress(Exception):
                self.parent.settle()


class NullRun:
    """Stands in for a StageRun on the non-zero ranks of a DDP run (they log nothing)."""

    run_id = None
    parent = None

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


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


@contextlib.contextmanager
def tracked(pipeline, stage: str, variant: str | None, params: dict, tags: dict) -> Iterator:
    """A stage's tracking on rank 0 (a StageRun), a NullRun elsewhere."""
    if not is_global_zero():
        yield NullRun()
        return
    with stage_run(pipeline, stage, variant, params, tags) as run:
        yield run
