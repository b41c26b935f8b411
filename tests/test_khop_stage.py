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
    # tiny's k-hop cycle_x1 has two seeds, trained together: each resumes bit for bit
    for seed in ("seed0", "seed1"):
        a, b = (json.loads((runs[name] / out / seed / "metrics.json").read_text()) for name in ("killed", "whole"))
        assert a["resumed_from_step"] == 2 and b["resumed_from_step"] == 0
        for key in ("final_loss", "steps", "tokens_seen", "loss_curve"):
            assert a[key] == b[key], key
        wa, wb = (torch.load(runs[name] / out / seed / "model.pt", weights_only=True) for name in ("killed", "whole"))
        state_a, state_b = wa["state_dict"], wb["state_dict"]
        assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.slow
def test_a_training_stage_prints_its_estimated_time_early(tmp_path):
    import re

    import yaml

    raw = yaml.safe_load((ROOT / "conf/profiles/tiny.yaml").read_text())
    raw["khop"]["train"]["max_steps"] = 8
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = _stage(tmp_path, "--family", "khop", "--variant", "cycle_x1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in re.split(r"[\r\n]", proc.stdout) if line.startswith("vld: ")]
    # 8 steps of 2 micro-batches, two seeds trained together; the estimate before the closing line
    assert re.fullmatch(r"vld: pretrain_khop@cycle_x1: estimated \d+ s for 8 steps x 2 seeds \(from micro-batches"
                        r" 2-4\)", lines[0]), lines
    assert lines[1].startswith("vld: pretrain_khop@cycle_x1: 2 seeds -> results/pretrain/khop/cycle_x1"), lines


@pytest.mark.slow
def test_params_edited_while_a_stage_trains_stop_it_before_it_writes(tmp_path):
    """The stage checks params.yaml again before writing: DVC would otherwise record settings
    the stage did not run with (and the next stages would train on them)."""
    import time

    import yaml

    raw = yaml.safe_load((ROOT / "conf/profiles/tiny.yaml").read_text())
    raw["khop"]["train"].update(max_steps=300, checkpoint_every=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = dict(os.environ, VLD_TRACKING="0", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "vld.pipeline.pretrain", "--family", "khop", "--variant", "base"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((tmp_path / ".vld-work").rglob("last.ckpt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    raw["khop"]["train"]["max_steps"] = 200  # the edit arrives while it trains
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 2, err[-3000:]
    assert err.strip().splitlines()[-1] == ("vld: error: khop.variants.base: changed in params.yaml while this stage"
                                            " ran; nothing was written (run dvc repro again)")
    assert "Traceback" not in err and not (tmp_path / "results/pretrain/khop/base").exists()


def test_the_report_refuses_results_of_other_settings(tmp_path, monkeypatch):
    from vld.errors import UserError
    from vld.pipeline import paths
    from vld.pipeline.params import load_pipeline
    from vld.pipeline.report import current_results

    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "conf/profiles/tiny.yaml", "params.yaml")
    pipeline = load_pipeline("params.yaml")
    for family, table in pipeline.variants.items():
        for name, variant in table.items():
            for seeded in variant.per_seed():
                path = paths.eval_file(family, name, seeded.seed)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"variant": name, "variant_sha256": seeded.fingerprint()}))
    assert len(current_results(pipeline)) == sum(len(v.seeds) for t in pipeline.variants.values() for v in t.values())
    stale = paths.eval_file("khop", "cycle_x1", 1)
    # a seed's result checked against that seed's settings: seed 0's fingerprint is not seed 1's
    stale.write_text(json.dumps({"variant": "cycle_x1", "variant_sha256": pipeline.variants["khop"]["cycle_x1"].fingerprint()}))
    with pytest.raises(UserError, match=r"^results/eval/khop/cycle_x1/seed1.json: was computed with other settings than "
                                         r"khop.variants.cycle_x1 in params.yaml says now"):
        current_results(pipeline)
    stale.unlink()
    with pytest.raises(UserError, match=r"^results/eval/khop/cycle_x1/seed1.json: missing"):
        current_results(pipeline)
