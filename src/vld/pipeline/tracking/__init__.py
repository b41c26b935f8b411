"""MLflow tracking of the pipeline: one experiment per profile, a parent run per pipeline, a
child run per stage and variant, and a JSON record per stage for the stages DVC restores.

One module per job:
- `store`: where the store is (MLFLOW_TRACKING_URI, else sqlite `mlflow.db` in the repository
  DVC was started in), the cheap probe before any compute, the lock around a fresh store's
  creation, the client;
- `runs`: the experiment, the parent run, run states (stale runs closed, the parent settled
  from its children) and batched writes into a run;
- `stage`: `StageRun` (one stage execution), `tracked` (rank 0 only), `NullRun`;
- `lineage`: the datasets a run read (MLflow inputs) and the models it trained (logged models,
  by reference to DVC's checkpoints; `load_logged_model` loads one);
- `records`: the record files and their replay as restored child runs by the report stage;
- `logger`: Lightning's MLFlowLogger bound to a stage's child run (imports lightning).

Set VLD_TRACKING=off (or 0, false, no) to run without MLflow (records are still written).
mlflow is imported lazily, after the probe. This package imports nothing from
vld.pipeline.params (params imports the stages' helpers, not the other way round).
"""

from vld.pipeline.tracking.lineage import (
    dataset_entry,
    load_logged_model,
    model_entry,
    stream_entry,
)
from vld.pipeline.tracking.records import (
    RECORD_SCHEMA,
    RECORDS_DIR,
    finish_pipeline,
    read_records,
    reattach_records,
    record_path,
    stage_key,
)
from vld.pipeline.tracking.runs import (
    ParentRun,
    close_stale_runs,
    pipeline_state,
    pipeline_tags,
    process_alive,
    process_tag,
    settle_parent,
)
from vld.pipeline.tracking.stage import (
    NullRun,
    StageRun,
    file_sha256,
    git_commit,
    is_global_zero,
    stage_run,
    tracked,
)
from vld.pipeline.tracking.store import (
    OFF_HINT,
    enabled,
    probe_store,
    repo_root,
    sqlite_path,
    store_lock,
    store_root,
    tracking_uri,
)

__all__ = ["NullRun", "OFF_HINT", "ParentRun", "RECORDS_DIR", "RECORD_SCHEMA", "StageRun", "close_stale_runs",
           "dataset_entry", "enabled", "file_sha256", "finish_pipeline", "git_commit", "is_global_zero",
           "load_logged_model", "model_entry", "pipeline_state", "stream_entry",
           "pipeline_tags", "probe_store", "process_alive", "process_tag", "reattach_records", "read_records",
           "record_path", "repo_root", "settle_parent", "sqlite_path", "stage_key", "stage_run", "store_lock",
           "store_root", "tracked", "tracking_uri"]
