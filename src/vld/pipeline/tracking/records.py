"""Tracking records and their replay for stages DVC restored from its cache.

When DVC restores a stage's outputs from its cache, the stage's command does not run, so it
logs nothing. Therefore every stage also writes its tracking record (params, metrics, tags,
artifact paths, its run id) as `results/records/<stage>@<variant>/seed<s>.json` (one per seed; a data
stage: `results/records/<stage>[@<dataset>].json`), a DVC output of the
stage, so DVC caches and restores it with the results. The report stage depends on every record
and runs whenever anything changed; it calls `reattach_records`, which gives every record whose
stage has no child run under the current parent a child run tagged `vld.restored=true` (with
`vld.original_run_id`, the metric histories copied from the original run when it is in the same
store, the artifacts, the dataset inputs and the logged models), then `finish_pipeline`. The MLflow view of the current parent is thus
always complete.

The functions taking a run take a StageRun (vld.pipeline.tracking.stage) and use its public
attributes: `parent` (a runs.ParentRun, None with tracking off), `root`, `params_sha256`, `commit`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vld.pipeline.tracking import lineage, runs
from vld.pipeline.tracking.store import repo_root, tracking_uri

RECORDS_DIR = Path("results/records")
RECORD_SCHEMA = "vld.tracking/1"


def stage_key(stage: str, variant: str | None) -> str:
    return stage if not variant else f"{stage}@{variant}"


def record_path(stage: str, variant: str | None, root: str | Path | None = None) -> Path:
    return repo_root(root) / RECORDS_DIR / f"{stage_key(stage, variant)}.json"


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


def reattach_records(run, records: list[dict[str, Any]]) -> list[str]:
    """Give every record without a child run under `run`'s parent a restored child run.

    Returns the stage keys that were re-attached.
    """
    parent = run.parent
    if parent is None or not records:
        return []
    present = {r.data.tags.get("vld.stage_key", "") for r in parent.children()}
    restored = []
    for record in records:
        key = record.get("stage_key")
        if not key or key in present:
            continue
        _restore(run, parent, key, record)
        restored.append(key)
    return restored


def _restore(run, parent: runs.ParentRun, key: str, record: dict[str, Any]) -> None:
    """One restored child run of `record` under `parent`."""
    client = parent.client
    tags = {k: str(v) for k, v in (record.get("tags") or {}).items()}
    tags.update({"vld.restored": "true", "vld.original_run_id": str(record.get("run_id")),
                 "vld.original_params_sha256": tags.get("vld.params_sha256", ""),
                 "vld.params_sha256": run.params_sha256, "vld.git_commit": run.commit})
    child = parent.start_child(key, tags)
    runs.log_params(client, child, record.get("params") or {})
    metrics = _copied_history(client, record.get("run_id"), record.get("tracking_uri"), run.root)
    copied = {m.key for m in metrics}
    finals = runs.numeric(record.get("metrics") or {})
    metrics += runs.metric_entities({k: v for k, v in finals.items() if k not in copied})
    runs.log_metric_entities(client, child, metrics)
    runs.log_artifacts(client, child, run.root, record.get("artifacts") or [])
    _restore_lineage(client, parent, child, record, same_store=record.get("tracking_uri") == tracking_uri(run.root))
    client.set_terminated(child, "FINISHED")


def _restore_lineage(client, parent: runs.ParentRun, child: str, record: dict[str, Any], same_store: bool) -> None:
    """The record's dataset inputs, and its models: the original logged model linked when this
    store holds it, else a new logged model pointing at the same checkpoint."""
    lineage.log_datasets(client, child, record.get("inputs") or [])
    if same_store and record.get("evaluated_model"):
        lineage.link_model_input(client, child, record["evaluated_model"])
    for entry in record.get("models") or []:
        model_id = entry.get("model_id")
        if not (same_store and model_id and lineage.link_model(client, child, model_id)):
            lineage.log_model(client, parent.experiment_id, child, entry)


def _copied_history(client, run_id, uri, root: Path) -> list:
    """The full metric histories of the original run, when it lives in this store."""
    if not run_id or uri != tracking_uri(root):
        return []
    try:
        original = client.get_run(run_id)
    except Exception:
        return []
    metrics = []
    for key in original.data.metrics:
        metrics.extend(client.get_metric_history(run_id, key))
    return metrics


def finish_pipeline(run, pipeline=None) -> None:
    """Log the resolved config on the parent run and mark it finished (the report is last)."""
    if run.parent is None:
        return
    config: dict[str, bytes] = {}
    if pipeline is not None:
        resolved = {family: {name: v.to_dict() for name, v in table.items()}
                    for family, table in pipeline.variants.items()}
        config = {"params.yaml": Path(pipeline.path).read_bytes(),
                  "resolved_variants.json": json.dumps(resolved, indent=1, sort_keys=True).encode()}
    run.parent.complete(config)
