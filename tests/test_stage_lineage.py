"""A real training stage (the tiny profile's k-hop pretrain of cycle_x1, two seeds trained
together) with a real sqlite MLflow store: what MLflow 3 shows of it (experiment kind, dataset
inputs, logged models loadable from MLflow, their replay) and what the stage prints (no
third-party tips or deprecation warnings, one progress bar, one summary line)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = Path("results/pretrain/khop/cycle_x1")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """(repo, completed process) of the stage, run once for the module."""
    repo = tmp_path_factory.mktemp("lineage")
    shutil.copy(ROOT / "conf/profiles/tiny.yaml", repo / "params.yaml")
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "VLD_TRACKING", "PYTHONWARNINGS", "DVC_ROOT")}
    proc = subprocess.run([sys.executable, "-m", "vld.pipeline.pretrain", "--family", "khop", "--variant", "cycle_x1"],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return repo, proc


def _client(repo: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    return client, client.get_experiment_by_name("tiny")


def _children(client, experiment_id: str) -> list:
    return [r for r in client.search_runs([experiment_id], max_results=100) if r.data.tags.get("mlflow.parentRunId")]


def test_the_stage_prints_no_third_party_noise_and_one_summary_line(stage):
    repo, proc = stage
    output = proc.stdout + proc.stderr
    for noise in ("Tip", "litlogger", "deprecated", "No artists with labels", "weights_only"):
        assert noise not in output, noise
    # one bar, in optimizer steps (4), with steps per second and the time left
    assert "4.0/4.0 [" in output and "step/s" in output and "<" in output.split("4.0/4.0 [", 1)[1]
    finals = [json.loads((repo / OUT / f"seed{s}" / "metrics.json").read_text())["final_loss"] for s in (0, 1)]
    said = [line for line in proc.stdout.splitlines() if line.startswith("vld: ")]
    # the time estimate once, after the first micro-batches, then the one summary line
    estimate = [line for line in said if ": estimated " in line]
    summary = [line for line in said if line not in estimate]
    assert len(estimate) == 1 and len(summary) == 1, said
    assert said.index(estimate[0]) < said.index(summary[0])
    expected = (f"vld: pretrain_khop@cycle_x1: 2 seeds -> {OUT} (final loss "
                f"{finals[0]:.3g} / {finals[1]:.3g}) in ")
    assert summary[0].startswith(expected) and re.fullmatch(r"\d+ s", summary[0][len(expected):]), summary[0]


def test_the_experiment_opens_on_runs_and_each_run_has_its_data_and_model(stage):
    repo, _ = stage
    from vld.model import load_model
    from vld.pipeline.tracking import load_logged_model

    client, experiment = _client(repo)
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    spec = yaml.safe_load((repo / "params.yaml").read_text())["data"]["khop"]["kh12"]
    sha = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    children = _children(client, experiment.experiment_id)
    assert sorted(r.info.run_name for r in children) == ["pretrain_khop@cycle_x1/seed0", "pretrain_khop@cycle_x1/seed1"]
    models = {m.model_id: m for m in client.search_logged_models([experiment.experiment_id])}
    assert len(models) == 2
    for run in children:
        [data] = run.inputs.dataset_inputs
        assert (data.dataset.name, data.dataset.digest) == ("kh12", sha[:32])
        assert {t.key: t.value for t in data.tags} == {"mlflow.data.context": "training", "vld.sha256": sha}
        [output] = run.outputs.model_outputs
        model = models[output.model_id]
        seed = run.data.tags["vld.seed"]
        assert model.source_run_id == run.info.run_id and model.status.to_int() == model.status.READY.to_int()
        assert model.name == f"khop-cycle_x1-seed{seed}"
        final = json.loads((repo / OUT / f"seed{seed}" / "metrics.json").read_text())["final_loss"]
        assert {m.key: m.value for m in model.metrics}["final_loss"] == pytest.approx(final)
        assert model.params["seed"] == seed
        # loaded through MLflow (the documented one-liner) it is the DVC output, not a copy
        from_mlflow = load_logged_model(f"models:/{output.model_id}", f"sqlite:///{repo / 'mlflow.db'}")
        from_dvc = load_model(repo / OUT / f"seed{seed}" / "model.pt")
        tokens = torch.randint(0, from_dvc.config.vocab_size, (3, 10), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.equal(from_mlflow(tokens), from_dvc(tokens))
    artifacts = [p for p in (repo / "mlruns").rglob("*") if p.is_file()]
    assert not [p for p in artifacts if p.suffix in (".pt", ".ckpt")], "weights are referenced, never copied"


def test_a_restored_run_carries_the_records_data_and_model(stage, monkeypatch):
    repo, _ = stage
    from vld.pipeline import tracking
    from vld.pipeline.params import load_pipeline

    for name in ("MLFLOW_TRACKING_URI", "VLD_TRACKING", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(repo)
    params = repo / "params.yaml"
    params.write_text(params.read_text() + "\n# another version: another parent run\n")
    pipeline = load_pipeline("params.yaml")
    with tracking.stage_run(pipeline, "report") as run:
        restored = tracking.reattach_records(run, tracking.read_records())
        parent = run.parent.run_id
        run.finish(record_file=repo / "report_record.json")
    assert sorted(restored) == ["pretrain_khop@cycle_x1/seed0", "pretrain_khop@cycle_x1/seed1"]
    client, experiment = _client(repo)
    records = {r["stage_key"]: r for r in tracking.read_records(repo)}
    for child in _children(client, experiment.experiment_id):
        if child.data.tags["mlflow.parentRunId"] != parent or child.data.tags["vld.stage"] == "report":
            continue
        record = records[child.data.tags["vld.stage_key"]]
        [data] = child.inputs.dataset_inputs
        assert data.dataset.digest == record["inputs"][0]["sha256"][:32]
        assert [o.model_id for o in child.outputs.model_outputs] == [record["models"][0]["model_id"]]
    assert len(client.search_logged_models([experiment.experiment_id])) == 2, "linked, not logged twice"
