"""The k-hop training stage: killed after a checkpoint and run again, it ends with the same
final metrics and weights as an uninterrupted run (its data is a stream of (seed, step))."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "stage_exit_after_step.py"


def _stage(cwd: Path, *args: str, exit_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, VLD_TRACKING="0", PYTHONWARNINGS="ignore")
    if exit_after is None:
        cmd = [sys.executable, "-m", "vld.pipeline.pretrain", *args]
    else:
        env["VLD_TEST_EXIT_AFTER_STEP"] = str(exit_after)
        cmd = [sys.executable, str(SCRIPT), "pretrain", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_killed_khop_stage_resumes_to_the_uninterrupted_result(tmp_path):
    args = ("--family", "khop", "--variant", "cycle_x1")
    runs = {}
    for name in ("killed", "whole"):
        (tmp_path / name).mkdir()
        shutil.copy(ROOT / "conf/profiles/tiny.yaml", tmp_path / name / "params.yaml")
        runs[name] = tmp_path / name
    killed = _stage(runs["killed"], *args, exit_after=3)  # checkpoints at steps 2 and 4
    assert killed.returncode == 17, killed.stderr[-3000:]
    out = Path("results/pretrain/khop/cycle_x1")
    assert not (runs["killed"] / out).exists()
    checkpoints = list((runs["killed"] / ".vld-work").rglob("last.ckpt"))
    assert len(checkpoints) == 1 and torch.load(checkpoints[0], weights_only=True)["global_step"] == 2
    resumed = _stage(runs["killed"], *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    whole = _stage(runs["whole"], *args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    a, b = (json.loads((runs[name] / out / "metrics.json").read_text()) for name in ("killed", "whole"))
    assert a["resumed_from_step"] == 2 and b["resumed_from_step"] == 0
    for key in ("final_loss", "steps", "tokens_seen", "loss_curve"):
        assert a[key] == b[key], key
    wa, wb = (torch.load(runs[name] / out / "model.pt", weights_only=True) for name in ("killed", "whole"))
    state_a, state_b = wa.get("state_dict", wa), wb.get("state_dict", wb)
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
