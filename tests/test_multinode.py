"""A training stage run with DDP the ways a user runs it: on one node with 2 processes (the stage
command started once; Lightning starts the second rank), and on two nodes, the same command
started once per node, either directly with NODE_RANK 0 and 1 or under torchrun --nnodes 2
(here both nodes on this machine, one gloo process each, in one directory as on a shared
filesystem). It must train like one process at the same global batch, and only global rank 0
may write outputs and track the run in MLflow."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_train_ddp import TOLERANCE, finish, launch_nodes, start

ROOT = Path(__file__).resolve().parents[1]
STAGE = ["-m", "vld.pipeline.pretrain", "--family", "knowledge", "--variant", "w16"]
# name: (hardware, launcher prefix of the stage command, nodes)
LAUNCHES = {
    "1 node x 2": ({"devices": 2, "num_nodes": 1}, [], 1),
    # Lightning reads MASTER_ADDR, MASTER_PORT, NODE_RANK
    "2 nodes x 1": ({"devices": 1, "num_nodes": 2}, [], 2),
    "2 nodes x 1, torchrun": ({"devices": 1, "num_nodes": 2},  # torchrun reads PET_*
                              ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"], 2),
}
TRACKED = {"VLD_TRACKING": "1", "MLFLOW_TRACKING_URI": ""}  # each workspace's own mlflow.db


def stage_runs(workspace: Path, stage_key: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    runs = [run for experiment in client.search_experiments()
            for run in client.search_runs([experiment.experiment_id], max_results=1000)]
    return [run for run in runs if run.data.tags.get("vld.stage_key") == stage_key]


@pytest.fixture(scope="module")
def trained_alone(tmp_path_factory):
    """The profile, a workspace holding only its data, and the same stage trained there by one
    process: the reference every launch is compared with (trained once for all of them)."""
    profile = yaml.safe_load((ROOT / "conf" / "profiles" / "tiny.yaml").read_text())
    for family in ("reasoning", "knowledge", "retrofit"):
        # global batch 4: one process accumulates 2 micro-batches of 2, each node takes one
        profile[family]["train"]["micro_batch_size"] = 2
    profile["knowledge"]["train"]["max_steps"] = 6
    root = tmp_path_factory.mktemp("multinode")
    data, one = root / "data_only", root / "one"
    data.mkdir()
    (data / "params.yaml").write_text(yaml.safe_dump(profile))
    subprocess.run([sys.executable, "-m", "vld.pipeline.data_knowledge", "--dataset", "rt1k"], cwd=data,
                   check=True, capture_output=True, timeout=120)
    shutil.copytree(data, one)
    single = finish(start(STAGE, TRACKED, cwd=one))
    assert single.returncode == 0, single.stdout[-3000:]
    return profile, data, one


@pytest.mark.slow
@pytest.mark.parametrize("launch", LAUNCHES)
def test_pretrain_stage_under_ddp_trains_like_one_process(tmp_path, trained_alone, launch):
    from vld.model import load_model

    profile, data, one = trained_alone
    nodes = tmp_path / "nodes"
    shutil.copytree(data, nodes)
    profile = copy.deepcopy(profile)
    hardware, launcher, n_nodes = LAUNCHES[launch]
    profile["hardware"].update(hardware, strategy="ddp")
    (nodes / "params.yaml").write_text(yaml.safe_dump(profile))

    done = launch_nodes([(launcher + STAGE, nodes)] * n_nodes, env=TRACKED)
    assert all(node.returncode == 0 for node in done), "".join(node.stdout[-3000:] for node in done)
    assert "Starting with 2 processes" in done[0].stdout

    out = Path("results") / "pretrain" / "knowledge" / "w16" / "seed0"
    a = json.loads((one / out / "metrics.json").read_text())
    b = json.loads((nodes / out / "metrics.json").read_text())
    assert b["steps"] == a["steps"] == 6 and b["tokens_seen"] == a["tokens_seen"]
    assert b["loss_curve"] == pytest.approx(a["loss_curve"], abs=TOLERANCE, rel=0)
    wa, wb = load_model(one / out / "model.pt").state_dict(), load_model(nodes / out / "model.pt").state_dict()
    assert wa.keys() == wb.keys() and max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4

    runs = stage_runs(nodes, "pretrain_knowledge@w16/seed0")  # rank 1 tracked nothing
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.metrics["final_loss"] == pytest.approx(b["final_loss"], abs=1e-6)
    assert not list((nodes / ".vld-work").glob("pretrain_knowledge/*"))  # the finished run's checkpoints are gone
