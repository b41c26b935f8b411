"""What a run read and what it made, as MLflow 3 shows them: dataset inputs and logged models.

Datasets are logged by reference (name, digest, source path, context `training` or `test`):
no data goes into MLflow. The digest is the data's content hash (the token set's
`tokens_sha256`, else the sha256 of its meta.json, which holds every file's hash; a generated
stream: the sha256 of its settings), cut to MLflow's 36 characters; the full hash is the input's
tag `vld.sha256`.

Every trained model (each seed) is an MLflow LoggedModel of its run (source run, params, final
metrics, status READY). Its weights stay DVC's output: the logged model points at them by its
tags `vld.checkpoint` (absolute path when logged), `vld.checkpoint.relpath` (from the
repository root) and `vld.loader`; nothing is copied. Load one from MLflow with

    python -c "from vld.pipeline.tracking import load_logged_model; m = load_logged_model('m-...')"

(`models:/m-...` works too; the store is the pipeline's, or `tracking_uri=`).

Entries (plain dicts) are what the stage's record keeps, so the record replay
(vld.pipeline.tracking.records) can attach the same inputs and models to a restored run.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from vld.pipeline.tracking.runs import clean_params, numeric
from vld.pipeline.tracking.store import repo_root, tracking_uri

DIGEST_LEN = 32  # MLflow keeps at most 36 characters of a dataset digest
CONTEXT_TAG = "mlflow.data.context"  # what the UI shows as the input's context
MODEL_TYPE = "vld"
LOADERS = ("vld.model.load_model", "vld.retrofit.api.load_retrofit")


# ----------------------------------------------------------------------------- datasets

def data_digest(path: str | Path) -> str:
    """The content hash of a data directory: its tokens_sha256, else the sha256 of meta.json."""
    meta = Path(path) / "meta.json"
    try:
        text = meta.read_bytes()
    except OSError:
        return "unknown"
    try:
        recorded = json.loads(text).get("tokens_sha256")
    except (ValueError, AttributeError):
        recorded = None
    return str(recorded) if recorded else hashlib.sha256(text).hexdigest()


def dataset_entry(name: str, path: str | Path, context: str, root: Path | None = None) -> dict[str, Any]:
    """A data directory as an input entry (`path` relative to the repository root)."""
    full = repo_root(root) / path
    return {"name": name, "sha256": data_digest(full), "source_type": "local",
            "source": json.dumps({"uri": str(full.resolve())}), "context": context}


def stream_entry(name: str, generator: str, spec: dict[str, Any], context: str) -> dict[str, Any]:
    """A generated stream (no files) as an input entry: its settings are the data."""
    settings = json.dumps(spec, sort_keys=True, default=str)
    return {"name": name, "sha256": hashlib.sha256(settings.encode()).hexdigest(), "source_type": "code",
            "source": json.dumps({"generator": generator, "spec": json.loads(settings)}), "context": context}


def log_datasets(client, run_id: str, entries: list[dict[str, Any]]) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = [DatasetInput(Dataset(e["name"], e["sha256"][:DIGEST_LEN], e["source_type"], e["source"]),
                           [InputTag(CONTEXT_TAG, e["context"]), InputTag("vld.sha256", e["sha256"])])
              for e in entries]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)


# ----------------------------------------------------------------------------- models

def model_entry(name: str, checkpoint: str | Path, loader: str, params: dict[str, Any],
                metrics: dict[str, float], root: Path | None = None) -> dict[str, Any]:
    """A trained model as an entry (`checkpoint` relative to the repository root; of
    `metrics`, the finite numbers)."""
    if loader not in LOADERS:
        raise ValueError(f"unknown loader {loader!r}")
    full = repo_root(root) / checkpoint
    return {"name": name, "checkpoint": str(full.resolve()), "relpath": str(checkpoint), "loader": loader,
            "params": {str(k): str(v) for k, v in params.items()}, "metrics": numeric(metrics), "model_id": None}


def log_model(client, experiment_id: str, run_id: str, entry: dict[str, Any]) -> str:
    """A READY LoggedModel of `entry` with `run_id` as its source run; returns its id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric

    tags = {"vld.checkpoint": entry["checkpoint"], "vld.checkpoint.relpath": entry["relpath"],
            "vld.loader": entry["loader"]}
    model = client.create_logged_model(experiment_id, name=entry["name"], source_run_id=run_id, tags=tags,
                                       params=clean_params(entry["params"]), model_type=MODEL_TYPE)
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0, model_id=model.model_id) for k, v in entry["metrics"].items()]
    if metrics:
        client.log_batch(run_id, metrics=metrics)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id


def link_model(client, run_id: str, model_id: str) -> bool:
    """Make an existing logged model an output of `run_id`; False when the store lacks it."""
    from mlflow.entities import LoggedModelOutput

    try:
        client.get_logged_model(model_id)
    except Exception:
        return False
    client.log_outputs(run_id, [LoggedModelOutput(model_id, 0)])
    return True


def recorded_model_id(record_file: str | Path) -> str | None:
    """The logged model id in a training stage's record (None: none, or tracking was off)."""
    try:
        record = json.loads(Path(record_file).read_text())
    except (OSError, ValueError):
        return None
    models = (record.get("models") or []) if isinstance(record, dict) else []
    return models[0].get("model_id") if models else None


def link_model_input(client, run_id: str, model_id: str) -> bool:
    """Make an existing logged model an input of `run_id` (an evaluation of it); False when the
    store lacks it."""
    from mlflow.entities import LoggedModelInput

    try:
        client.get_logged_model(model_id)
    except Exception:
        return False
    client.log_inputs(run_id, models=[LoggedModelInput(model_id)])
    return True


def load_logged_model(model: str, tracking_uri_: str | None = None):
    """The model of a LoggedModel (`m-...` or `models:/m-...`), loaded from the checkpoint it
    points at (vld.model.load_model, or a retrofit's model through load_retrofit)."""
    from mlflow.tracking import MlflowClient

    model_id = model[len("models:/"):] if model.startswith("models:/") else model
    logged = MlflowClient(tracking_uri=tracking_uri_ or tracking_uri()).get_logged_model(model_id)
    path = Path(logged.tags["vld.checkpoint"])
    if not path.exists():  # the repository moved: the path from the root of this one
        path = repo_root() / logged.tags["vld.checkpoint.relpath"]
    if logged.tags.get("vld.loader") == "vld.retrofit.api.load_retrofit":
        from vld.retrofit.api import load_retrofit

        return load_retrofit(path)[0]
    from vld.model import load_model

    return load_model(path)
