"""`compile: true` (hardware block or a family's train block): the training forward runs through
torch.compile. It is another arithmetic (inductor's fused kernels, the BLAS's GEMMs on CPU), so it
is off unless set, recorded where it ran (metrics, MLflow params, the variant's fingerprint, the
trained-on record of an evaluation), and refused before any compute where it cannot run."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from golden_loss import GOLDEN_FILE, tiny_model, tiny_train_config
from test_hardware import train  # the tiny training run
from user_errors import one_line
from vld.errors import UserError
from vld.machine import machine_label
from vld.pipeline import params as P
from vld.train.config import TrainConfig, check_devices
from vld.train.datamodules import TokenWindowDataModule
from vld.train.loops import LoopTraining
from vld.train.module import LMModule
from vld.train.run import run_training
from vld.train.stacked import train_seeds

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"max_steps": 4, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 8}
# compiled against eager: the same model and data through other kernels (float32 rounding only)
CLOSE = 1e-4


def tiny_profile() -> dict:
    return yaml.safe_load((ROOT / "conf/profiles/tiny.yaml").read_text())


# ----------------------------------------------------------------------------- the setting

def test_compile_is_off_unless_set_and_recorded_only_when_on():
    off = TrainConfig.from_dict(SIZES)
    assert off.compile is False and "compile" not in off.to_dict()  # fingerprints of earlier runs unchanged
    on = TrainConfig.from_dict({**SIZES, "compile": True})
    assert on.to_dict()["compile"] is True and TrainConfig.from_dict(on.to_dict()) == on


def test_compile_is_a_hardware_key_a_family_may_override():
    raw = tiny_profile()
    before = P.validate(raw).variant("khop", "base")
    raw["hardware"]["compile"] = True
    pipeline = P.validate(raw)
    assert {v.train.compile for table in pipeline.variants.values() for v in table.values()} == {True}
    on = pipeline.variant("khop", "base")
    assert on.flat_params()["train.compile"] is True and on.fingerprint() != before.fingerprint()
    raw["khop"]["train"]["compile"] = False
    pipeline = P.validate(raw)
    assert pipeline.variant("khop", "base").train.compile is False
    assert pipeline.variant("reasoning", "base").train.compile is True
    assert pipeline.variant("khop", "base").fingerprint() == before.fingerprint()  # off = as if never set


@pytest.mark.parametrize("layer, value, expected", [
    ("hardware", "yes", "hardware.compile: expected true or false, got 'yes'"),
    ("hardware", 1, "hardware.compile: expected true or false, got 1"),
    ("khop.train", None, "khop.train.compile: expected true or false, got None"),
])
def test_a_bad_compile_value_is_one_line_naming_the_key(layer, value, expected):
    raw = tiny_profile()
    (raw["hardware"] if layer == "hardware" else raw["khop"]["train"])["compile"] = value
    with pytest.raises(UserError) as err:
        P.validate(raw)
    assert one_line(err) == expected


def test_compile_with_fsdp_is_refused():
    with pytest.raises(UserError) as err:
        TrainConfig.from_dict({**SIZES, "accelerator": "gpu", "strategy": "fsdp", "compile": True})
    assert one_line(err).startswith("train.compile: not with strategy fsdp")


def test_compile_on_cpu_without_a_cpp_compiler_is_refused_before_any_compute(monkeypatch):
    raw = tiny_profile()
    raw["hardware"]["compile"] = True
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(UserError) as err:
        P.validate(raw)
    assert one_line(err).startswith("hardware.compile: torch.compile on CPU needs a C++ compiler, and "
                                    "'/nonexistent/g++' is not on PATH")
    monkeypatch.setenv("CXX", shutil.which("g++") or "g++")
    assert P.validate(raw).variant("khop", "base").train.compile is True


@pytest.mark.skipif(torch.cuda.is_available(), reason="accelerator auto picks the GPU here")
def test_compile_with_accelerator_auto_on_a_cpu_machine_checks_the_cpp_compiler_before_the_run(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    cfg = TrainConfig(**SIZES, accelerator="auto", compile=True)  # read before the device is known
    with pytest.raises(UserError) as err:
        check_devices(cfg, "hardware")  # what every stage calls before it starts a run
    assert one_line(err).startswith("hardware.compile: torch.compile on CPU needs a C++ compiler")
    check_devices(TrainConfig(**SIZES, accelerator="auto"), "hardware")  # eager: nothing to compile


@pytest.mark.parametrize("recipe, key", [({"loop_sampling": "poisson"}, "loop_sampling"),
                                         ({"loop_curriculum": 0.5}, "loop_curriculum")])
def test_a_loop_count_drawn_per_step_is_refused_with_compile(recipe, key):
    raw = tiny_profile()
    raw["khop"]["variants"]["looped"] = {**raw["khop"]["variants"]["base"], "schedule": {"pattern": "cycle", "k": 1},
                                         "recipe": recipe}
    P.validate(raw)  # eager: fine
    raw["khop"]["train"]["compile"] = True
    with pytest.raises(UserError) as err:
        P.validate(raw)
    assert one_line(err).startswith(f"khop.variants.looped.recipe.{key}: ")
    assert "compile: true" in one_line(err)


def test_an_api_caller_varying_the_loop_count_is_refused_before_training(tiny_data, tmp_path):
    model = tiny_model(seed=0)
    drawn = LoopTraining(model.config.n_layer, None, 3, "poisson")
    with pytest.raises(UserError) as err:
        LMModule(model, loops=drawn).compile_training()
    assert one_line(err).startswith("train.compile: the loop count varies between steps")
    LMModule(model, loops=LoopTraining(model.config.n_layer, None, 3, "fixed")).compile_training()  # one count: fine
    # through run_training: refused before a step is taken, so no metrics or checkpoint written
    cfg = tiny_train_config(compile=True)
    dm = TokenWindowDataModule(tiny_data, cfg.seq_len, cfg.micro_batch_size, seed=cfg.seed)
    with pytest.raises(UserError, match="^train.compile: the loop count varies"):
        run_training(tiny_model(seed=0, backend=cfg.backend), dm, cfg, tmp_path / "run", loops=drawn)
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert not list((tmp_path / "run").rglob("*.ckpt"))


# ----------------------------------------------------------------------------- training

def test_compiled_training_repeats_bit_for_bit_and_follows_eager(tiny_data, tmp_path):
    eager, eager_metrics = train(tiny_data, tmp_path / "eager", compile=False)
    first, metrics = train(tiny_data, tmp_path / "first", compile=True)
    again, again_metrics = train(tiny_data, tmp_path / "again", compile=True)
    assert metrics["compile"] is True and "compile" not in eager_metrics
    assert "compile" in machine_label({"cpu": "x", **metrics}) and "compile" not in machine_label({"cpu": "x", **eager_metrics})
    # the same settings: the same weights, bit for bit
    assert metrics["loss_curve"] == again_metrics["loss_curve"]
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    # the weights are the model's own (no torch.compile wrapper in the state_dict or checkpoint)
    assert list(first.state_dict()) == list(eager.state_dict())
    # another arithmetic, the same training: close to eager and to the golden curve
    golden = json.loads(GOLDEN_FILE.read_text())["losses"]
    for curve in (eager_metrics["loss_curve"], golden):
        assert metrics["loss_curve"] == pytest.approx(curve, rel=CLOSE, abs=0)
    # (the weights are not compared with eager's: AdamW's normalised step turns a last-bit change
    # in a near-zero gradient into a step of up to lr, so only the loss is a stable yardstick)
    assert metrics["loss_curve"][-1] < metrics["loss_curve"][0] < math.log(64) + 0.1


def test_seeds_trained_together_compile_as_one_and_follow_eager(tiny_data, tmp_path):
    def run(out: Path, compile_: bool):
        cfgs = [tiny_train_config(seed=seed, max_steps=6, compile=compile_) for seed in (0, 1)]
        models = [tiny_model(seed, backend=cfgs[0].backend) for seed in (0, 1)]
        dms = [TokenWindowDataModule(tiny_data, c.seq_len, c.micro_batch_size, seed=c.seed) for c in cfgs]
        return models, train_seeds(models, dms, cfgs, out)

    eager_models, eager = run(tmp_path / "eager", False)
    models, compiled = run(tmp_path / "compiled", True)
    for i in range(2):
        assert compiled[i]["compile"] is True and "compile" not in eager[i]
        assert compiled[i]["loss_curve"] == pytest.approx(eager[i]["loss_curve"], rel=CLOSE, abs=0)
        # the stacked models' weights were copied back into each seed's own model
        assert any(not torch.equal(tensor, tiny_model(i).state_dict()[name]) for name, tensor in models[i].state_dict().items())
        assert list(models[i].state_dict()) == list(eager_models[i].state_dict())
    assert compiled[0]["loss_curve"] != compiled[1]["loss_curve"]  # each seed its own model and data


def test_a_resume_with_compile_switched_is_refused(tiny_data, tmp_path):
    train(tiny_data, tmp_path / "run", max_steps=2)
    with pytest.raises(UserError) as err:
        train(tiny_data, tmp_path / "run", max_steps=2, compile=True)
    assert re.fullmatch(r"train\.compile: unset in the checkpoint \S+last\.ckpt, True now; delete \S+ to start over",
                        one_line(err))


@pytest.mark.slow
def test_a_stage_records_compile_where_its_results_go(tmp_path, monkeypatch):
    """The tiny profile's k-hop training stage with `hardware.compile: true` and MLflow on: the
    seeds' metrics and MLflow params say so, and so does the evaluation's record of what
    trained the model (the report's list of machines)."""
    from mlflow.tracking import MlflowClient

    from vld.pipeline import data_khop, evaluate, pretrain
    from vld.pipeline.paths import eval_file

    repo = tmp_path / "repo"
    repo.mkdir()
    raw = tiny_profile()
    raw["hardware"]["compile"] = True
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(repo)
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLD_TRACKING", "1")
    assert pretrain.main(["--family", "khop", "--variant", "base"]) == 0
    metrics = json.loads((repo / "results/pretrain/khop/base/seed0/metrics.json").read_text())
    assert metrics["compile"] is True
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = {r.data.tags.get("vld.stage_key"): r for r in client.search_runs([experiment.experiment_id])}
    assert runs["pretrain_khop@base/seed0"].data.params["train.compile"] == "True"
    assert {r.info.status for r in runs.values()} == {"FINISHED"}

    monkeypatch.setenv("VLD_TRACKING", "0")
    assert data_khop.main(["--dataset", "kh12"]) == 0
    assert evaluate.main(["--family", "khop", "--variant", "base"]) == 0
    trained_on = json.loads((repo / eval_file("khop", "base", 0)).read_text())["trained_on"]
    assert trained_on["compile"] is True and machine_label(trained_on).endswith(", compile True")


@pytest.mark.slow
def test_two_ddp_processes_train_compiled_like_one(tmp_path):
    """DDP over gloo (2 processes) with compile: true, against one process compiled: each rank
    compiles its own forward; gradients are averaged as without compile."""
    from golden_loss import write_tiny_token_set
    from test_train_ddp import TOLERANCE, launch, metrics_of, processes_in_group, train_in_process

    data = write_tiny_token_set(tmp_path / "data")
    ddp_train = {"devices": 2, "strategy": "ddp", "micro_batch_size": 4, "compile": True}
    result, pgid = launch(["--data", str(data), "--out", str(tmp_path / "ddp"), "--train", json.dumps(ddp_train)],
                          timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    assert processes_in_group(pgid) == []
    ddp = metrics_of(result.stdout)
    single, _ = train_in_process(data, tmp_path / "one", compile=True)
    assert ddp["compile"] is True and single["compile"] is True
    assert ddp["loss_curve"] == pytest.approx(single["loss_curve"], abs=TOLERANCE, rel=0)
