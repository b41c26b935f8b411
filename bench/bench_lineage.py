"""The time a stage spends logging its datasets and models to MLflow (vld.pipeline.tracking.lineage).

    .venv/bin/python bench/bench_lineage.py [--runs 5] [--seeds 2]

In a temporary repository with a fresh sqlite store, each run is one training stage of the tiny
profile's shape as the stages call it: `seeds` child runs, each logging one dataset input and one
logged model (params, final metrics), then one evaluation stage logging three test inputs per seed.
Prints the added seconds per stage (median and worst over the runs); the issue's bound is 1 s.
The store's creation and the child runs' own start are not counted: they ran before this work.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.add_argument("--runs", type=int, default=5)
    cli.add_argument("--seeds", type=int, default=2)
    args = cli.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("DVC_ROOT", None)
    os.environ["VLD_TRACKING"] = "on"
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        shutil.copy(ROOT / "conf/profiles/tiny.yaml", repo / "params.yaml")
        shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
        for name in ("train", "op2", "op3", "op4"):
            (repo / "data" / name).mkdir(parents=True)
            (repo / "data" / name / "meta.json").write_text('{"tokens_sha256": "%s"}' % (name * 20))
        os.chdir(repo)
        from vld.pipeline import tracking
        from vld.pipeline.params import load_pipeline

        pipeline = load_pipeline("params.yaml")
        params = {f"p{i}": i for i in range(40)}
        metrics = {"final_loss": 0.4, "steps": 4, "tokens_seen": 416, "train_tokens_per_s": 3500.0}
        train, evaluate = [], []
        for run_index in range(args.runs):
            stages = [tracking.StageRun(pipeline, "pretrain_bench", f"v{run_index}/seed{s}", params)
                      for s in range(args.seeds)]
            start = time.perf_counter()
            for seed, stage in enumerate(stages):
                stage.log_datasets([tracking.dataset_entry("igsm_train", "data/train", "training")])
                stage.log_model(tracking.model_entry(f"bench-v{run_index}-seed{seed}", f"results/v{run_index}/model.pt",
                                                     "vld.model.load_model", params, metrics))
            train.append(time.perf_counter() - start)
            for stage in stages:
                stage.finish()
            stages = [tracking.StageRun(pipeline, "evaluate_bench", f"v{run_index}/seed{s}", params)
                      for s in range(args.seeds)]
            start = time.perf_counter()
            for stage in stages:
                stage.log_datasets([tracking.dataset_entry(name, f"data/{name}", "test") for name in ("op2", "op3", "op4")])
            evaluate.append(time.perf_counter() - start)
            for stage in stages:
                stage.finish()
    for name, times in (("training stage", train), ("evaluation stage", evaluate)):
        print(f"{name} ({args.seeds} seed{'' if args.seeds == 1 else 's'}): added {statistics.median(times):.3f} s median,"
              f" {max(times):.3f} s worst over {len(times)} runs")


if __name__ == "__main__":
    main()
