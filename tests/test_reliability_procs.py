"""Issue 17, across processes (each bounded in time): a killed stage's run is closed when a
stage next starts, concurrent first use of a fresh store leaves it sound, a real stage stops
on a bad store or an unwritable output with one line and its earlier outputs intact, and
`dvc exp run --temp` tracks into the repository's store (real DVC, real MLflow sqlite)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_reliability import _runs, _stage, mounted, store  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

HOLD = """
import sys, time, types
from pathlib import Path
from vld.pipeline import tracking
pipeline = types.SimpleNamespace(profile="rel", path=Path("params.yaml"), variants={})
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.01)
with tracking.tracked(pipeline, sys.argv[2], "v", {}, {}) as run:
    print("started", flush=True)
    time.sleep(float(sys.argv[3]))
    run.finish()
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VLD_TRACKING", "DVC_ROOT")}
    env.update(DVC_NO_ANALYTICS="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@e", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@e")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def _hold(repo: Path, stage: str, start: float, hold_s: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(start), stage, str(hold_s)], cwd=repo, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_stage_run_is_closed_when_a_stage_next_starts(store):
    repo, pipeline = store
    proc = _hold(repo, "a", 0, 600)
    try:
        assert proc.stdout.readline().strip() == "started", proc.stderr.read()
        runs = _runs(repo)
        assert runs["a@v"][0].info.status == "RUNNING" and runs["parent"][0].info.status == "RUNNING"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    _stage(pipeline, "a")  # the rerun
    runs = _runs(repo)
    assert [r.info.status for r in runs["a@v"]] == ["KILLED", "FINISHED"]
    assert "killed" in runs["a@v"][0].data.tags["vld.end_reason"]
    assert runs["parent"][0].info.status == "FINISHED"


def test_concurrent_first_use_of_a_fresh_store(store):
    repo, _ = store
    start = time.time() + 8  # all three past their imports, then at once
    procs = [_hold(repo, f"s{i}", start, 0) for i in range(3)]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0], outs
    con = sqlite3.connect(repo / "mlflow.db")
    tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    con.close()
    assert "runs" in tables and not [t for t in tables if t.startswith("_alembic_tmp")]
    runs = _runs(repo)
    assert len(runs["parent"]) == 1 and runs["parent"][0].info.status == "FINISHED"
    assert all(runs[f"s{i}@v"][0].info.status == "FINISHED" for i in range(3))
    assert (repo / "mlflow.db.lock").exists()


def _tiny_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "tiny"
    repo.mkdir()
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    shutil.copy(ROOT / "conf/profiles/tiny.yaml", repo / "params.yaml")
    return repo


def _data_stage(repo: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vld.pipeline.data_knowledge", "--dataset", "rt1k"], cwd=repo,
                          env=_env(**env), capture_output=True, text=True, timeout=120)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("vld: error: "), proc.stderr
    return lines[0]


def test_real_stage_stops_on_a_bad_store_or_output_with_one_line(tmp_path):
    repo = _tiny_repo(tmp_path)
    assert _data_stage(repo, VLD_TRACKING="off").returncode == 0
    data = repo / "data/knowledge/rt1k"
    before = {p.name: p.read_bytes() for p in data.iterdir()}
    record = (repo / "results/records/data_knowledge@rt1k.json").read_bytes()
    start = time.monotonic()
    line = _one_error_line(_data_stage(repo, MLFLOW_TRACKING_URI="http://127.0.0.1:9"))
    assert time.monotonic() - start < 60
    assert line.startswith("vld: error: MLFLOW_TRACKING_URI=http://127.0.0.1:9: no MLflow server answers")
    assert line.endswith("set VLD_TRACKING=off to run without MLflow (records are still written)")
    line = _one_error_line(_data_stage(repo, MLFLOW_TRACKING_URI=f"file://{tmp_path}/mlruns"))
    assert "file store is in maintenance mode" in line
    with mounted(repo / "results" / "records", "ro,size=1m"):
        line = _one_error_line(_data_stage(repo, VLD_TRACKING="off"))
        assert line.startswith(f"vld: error: {repo / 'results/records/data_knowledge@rt1k.json'}: cannot be written")
    assert {p.name: p.read_bytes() for p in data.iterdir()} == before
    assert (repo / "results/records/data_knowledge@rt1k.json").read_bytes() == record
    assert not (repo / "mlflow.db").exists()


def _git_dvc(repo: Path, *cmd: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def test_dvc_exp_run_temp_and_queue_track_into_the_repository_store(dvc_project):
    from mlflow.tracking import MlflowClient

    repo = dvc_project
    shutil.copy(ROOT / "conf/profiles/tiny.yaml", repo / "params.yaml")
    (repo / ".gitignore").write_text("/mlflow.db\n/mlflow.db.lock\n/mlruns/\n")
    _git_dvc(repo, "git", "init", "-q")
    _git_dvc(repo, "dvc", "init", "-q")
    _git_dvc(repo, "git", "add", "-A")
    _git_dvc(repo, "git", "commit", "-qm", "tiny")
    _git_dvc(repo, "dvc", "exp", "run", "--temp", "data_knowledge@rt1k", "-S", "data.knowledge.rt1k.seed=5")
    assert not (repo / "data/knowledge/rt1k").exists()  # it ran in the temporary workspace
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get("vld.stage_key") == "data_knowledge@rt1k"]
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    assert children[0].data.params["data.seed"] == "5"
    assert Path(experiment.artifact_location.removeprefix("file://")).parent == repo / "mlruns"
    # a queued experiment too (run by DVC's queue worker, in its own temporary workspace)
    _git_dvc(repo, "dvc", "exp", "run", "--queue", "data_knowledge@rt1k", "-S", "data.knowledge.rt1k.seed=7")
    _git_dvc(repo, "dvc", "exp", "run", "--run-all")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    seeds = sorted(r.data.params["data.seed"] for r in runs if r.data.tags.get("vld.stage_key") == "data_knowledge@rt1k")
    assert seeds == ["5", "7"]
    # a single stage in the workspace: its parent is not left RUNNING, nothing is
    _git_dvc(repo, "dvc", "repro", "-s", "data_knowledge@rt1k")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("vld.role") == "pipeline"]
    assert len(parents) == 3 and len(runs) == 6
    assert all(r.info.status == "FINISHED" for r in runs)
