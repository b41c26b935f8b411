"""The k-hop training stage: killed after a checkpoint and run again, it ends with the same
final metrics and weights as an uninterrupted run (its data is a stream of (seed, step)); the
k-hop retrofit: exact without fine-tuning, and fine-tuned on the rest of its source's stream."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
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


def _module(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, VLD_TRACKING="0", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_khop_retrofit_with_the_identity_schedule_and_no_steps_evaluates_as_its_source(tmp_path, monkeypatch):
    """The k-hop retrofit's path (its source loaded through vld.retrofit, saved as a retrofit,
    loaded and evaluated by the khop_retrofit family on its source's test sets) changes nothing:
    without fine-tuning, the identity schedule evaluates bit for bit as the source. (A params.yaml
    cannot ask for zero steps, max_steps >= 1: the retrofit is written here as the stage writes
    it after training.)"""
    import yaml

    from vld.atomic import write_json
    from vld.pipeline.families import FAMILIES
    from vld.pipeline.params import load_pipeline
    from vld.retrofit.api import prepare_retrofit, save_retrofit

    raw = yaml.safe_load((ROOT / "conf/profiles/tiny.yaml").read_text())
    raw["khop"]["eval"] = raw["khop_retrofit"]["eval"] = {"bootstrap": 200, "depth_windows": 0, "ablations": True}
    raw["khop_retrofit"]["variants"] = {"same": {"source": "base", "schedule": {"pattern": "base", "k": 0}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for args in (("vld.pipeline.data_khop", "--dataset", "kh12"),
                 ("vld.pipeline.pretrain", "--family", "khop", "--variant", "base"),
                 ("vld.pipeline.evaluate", "--family", "khop", "--variant", "base")):
        done = _module(tmp_path, *args)
        assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.chdir(tmp_path)
    family = FAMILIES["khop_retrofit"]
    variant = load_pipeline("params.yaml").variant("khop_retrofit", "same").for_seed(0)
    model, meta = prepare_retrofit(family.source_model(variant), variant.schedule_spec)
    assert meta["schedule"] == [0, 1]
    save_retrofit(model, family.model_dir(variant), meta)
    write_json(family.model_dir(variant) / "variant.json", {"variant": variant.to_dict(), "sha256": variant.fingerprint()})
    done = _module(tmp_path, "vld.pipeline.evaluate", "--family", "khop_retrofit", "--variant", "same")
    assert done.returncode == 0, done.stderr[-3000:]
    source, retrofit = (json.loads((tmp_path / f"results/eval/{f}/seed0.json").read_text())
                        for f in ("khop/base", "khop_retrofit/same"))
    assert (source["family"], retrofit["family"], retrofit["source"], retrofit["data"]) == (
        "khop", "khop_retrofit", "base", "kh12")
    assert retrofit["khop"]["hops"] and retrofit["khop"] == source["khop"]  # every count and interval, exactly
    for result in (source, retrofit):  # the ablations' measured time is not a result
        del result["depth_use"]["cost"]["wall_s"]
    assert retrofit["depth_use"]["ablations"] and retrofit["depth_use"] == source["depth_use"]
    for key in ("params", "flops_per_token", "effective_depth", "schedule"):
        assert retrofit[key] == source[key], key


def test_a_khop_retrofit_fine_tunes_on_the_rest_of_its_sources_stream(tmp_path, monkeypatch):
    """Seed s of a k-hop retrofit trains on its source's stream (seed s) from the step where the
    source stopped: sequences the source never saw, as a longer run of the source would have."""
    import yaml

    from vld.data.khop import training_batch
    from vld.pipeline.families import FAMILIES
    from vld.pipeline.params import load_pipeline

    raw = yaml.safe_load((ROOT / "conf/profiles/tiny.yaml").read_text())
    raw["khop"]["variants"]["base"]["seeds"] = [0, 3]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline("params.yaml")
    retrofit = pipeline.variant("khop_retrofit", "cycle_x1")
    source = pipeline.variant("khop", "base")
    assert retrofit.seeds == (0, 3) and source.train.max_steps == 4
    spec = pipeline.data["khop"]["kh12"]
    size = retrofit.train.global_batch_size
    for seeded in retrofit.per_seed():
        stream = FAMILIES["khop_retrofit"].datamodule(seeded, pipeline).stream
        for step in (0, 1):
            inputs, labels = training_batch(spec, source.train.max_steps + step, size, seed=seeded.seed)
            for j in range(size):
                item = stream[(step, j)]
                assert np.array_equal(item["inputs"].numpy(), inputs[j]) and np.array_equal(item["labels"].numpy(), labels[j])
        # the source's own stream at the same seed starts at step 0
        first, _ = training_batch(spec, 0, size, seed=seeded.seed)
        own = FAMILIES["khop"].datamodule(source.for_seed(seeded.seed), pipeline).stream[(0, 0)]["inputs"].numpy()
        assert np.array_equal(own, first[0]) and not np.array_equal(own, inputs[0])
