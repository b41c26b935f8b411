"""params.yaml validation: every user error is one line naming the key, before any compute.

Most cases call the validator directly (fast); one bad file goes through a real `dvc repro`.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vld.errors import UserError
from vld.pipeline import params as P
from vld.pipeline.profile import select

ROOT = Path(__file__).resolve().parents[1]
PROFILES = sorted((ROOT / "conf" / "profiles").glob("*.yaml"))


def default_raw() -> dict:
    return P.load_yaml(ROOT / "params.yaml")


def error_of(raw: dict) -> str:
    with pytest.raises(UserError) as info:
        P.validate(raw, "params.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_default_params_equal_the_default_profile():
    assert (ROOT / "params.yaml").read_text() == (ROOT / "conf/profiles/default.yaml").read_text()


# LLaMA-3.2-3B-Instruct's config.json, as far as validation reads it
LLAMA_3B_CONFIG = {"model_type": "llama", "num_hidden_layers": 28, "hidden_size": 3072, "num_attention_heads": 24,
                   "intermediate_size": 8192, "vocab_size": 128256, "max_position_embeddings": 131072}


def _stand_in_llama_checkpoints(path: Path) -> list[str]:
    """The checkpoints a profile's data.sft names (the user puts them on disk): a config.json
    in the current directory stands in for each (validation reads only that)."""
    sources = [spec["source"] for spec in (P.load_yaml(path)["data"].get("sft") or {}).values()]
    for source in sources:
        Path(source).mkdir(parents=True)
        (Path(source) / "config.json").write_text(json.dumps(LLAMA_3B_CONFIG))
    return sources


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_profile_is_valid_and_named_after_its_file(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _stand_in_llama_checkpoints(path)
    pipeline = P.load_pipeline(path)
    assert pipeline.profile == path.stem
    assert pipeline.variants["reasoning"] or pipeline.variants["khop"], "every profile has reasoning variants"


def test_a_profile_without_its_llama_checkpoint_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        P.load_pipeline(ROOT / "conf/profiles/paper.yaml")
    assert str(info.value) == ("data.sft.chat.source: inputs/Llama-3.2-3B-Instruct is not a directory (a local Hugging"
                               " Face Llama checkpoint; nothing is downloaded)")
    assert P.load_pipeline(ROOT / "params.yaml").variants["lm_retrofit"] == {}  # the default has none


def test_paper_profile_has_table_2(tmp_path, monkeypatch):
    """The paper's Table 2 settings: LoRA rank 4, AdamW with clip 1.0, bf16, batch 192, activation
    checkpointing; Base and Cycle trained alike, the cycle reusing a layer range."""
    monkeypatch.chdir(tmp_path)
    _stand_in_llama_checkpoints(ROOT / "conf/profiles/paper.yaml")
    table2 = P.load_pipeline(ROOT / "conf/profiles/paper.yaml").variants["lm_retrofit"]
    base, cycle = table2["base"], table2["cycle"]
    for v in (base, cycle):
        assert (v.method, v.lora_rank, v.train.global_batch_size, v.train.optim.grad_clip) == ("lora", 4, 192, 1.0)
        assert v.train.precision == "bf16-mixed" and v.train.activation_checkpointing
    assert base.train == cycle.train and base.schedule == list(range(28))
    assert cycle.schedule == [*range(20), *range(8, 28)]


def test_default_profile_has_the_issue_grid():
    pipeline = P.load_pipeline(ROOT / "params.yaml")
    khop = pipeline.variants["khop"]
    base = khop["base"]
    got = {(v.pattern, v.k, v.model.n_layer, v.train.max_steps): len(v.seeds) for v in khop.values()}
    steps = base.train.max_steps
    # claims 2, 2c and 4 rest on cycle x1, base, the native model of the same effective depth
    # and the base model trained twice as long (same training FLOPs): three seeds each
    for key in (("cycle", 1, base.model.n_layer, steps), ("base", 0, base.model.n_layer, steps),
                ("base", 0, 2 * base.model.n_layer, steps), ("base", 0, base.model.n_layer, 2 * steps)):
        assert got.get(key, 0) >= 3, key
    knowledge = pipeline.variants["knowledge"]  # claim 1: w32 and w32 cycle x1
    assert all(len(v.seeds) >= 3 for v in knowledge.values() if v.model_name == "k32")
    assert pipeline.raw["hardware"]["threads"] == 2  # one arithmetic path on every machine
    assert {v.data for v in khop.values()} == {"kh32"}
    retro = pipeline.variants["retrofit"]
    assert {(v.pattern, v.k) for v in retro.values()} >= {("base", 0), ("cycle", 1)}
    assert {v.source for v in retro.values()} == {"base"}
    knowledge = pipeline.variants["knowledge"]
    assert len({v.model_name for v in knowledge.values() if v.pattern == "base"}) >= 3


def test_resolved_variant_fields():
    pipeline = P.load_pipeline(ROOT / "params.yaml")
    raw = default_raw()
    raw["reasoning"]["variants"]["cycle_x2"] = {"model": "r2", "schedule": {"pattern": "cycle", "k": 2}}
    v = P.validate(raw).variant("reasoning", "cycle_x2")
    assert v.schedule == [0, 1, 0, 1, 0, 1]
    assert v.effective_depth == 6
    assert v.train.accelerator == "cpu"  # hardware merged in
    assert v.train.max_steps == pipeline.raw["reasoning"]["train"]["max_steps"]
    assert v.model_config(vocab_size=100).schedule == [0, 1, 0, 1, 0, 1]
    assert v.model_config(vocab_size=100).vocab_size == 100
    r = pipeline.variant("retrofit", "cycle_x1")
    assert r.model_name == pipeline.variant("reasoning", "base").model_name
    assert r.schedule == [0, 1, 0, 1]


def test_variant_train_override_and_user_pattern():
    raw = default_raw()
    raw["models"]["r4"] = {**raw["models"]["r2"], "n_layer": 4}
    raw["reasoning"]["variants"]["mid"] = {"model": "r4", "schedule": {"pattern": "middle_cycle", "k": 1},
                                           "train": {"max_steps": 7}}
    v = P.validate(raw).variant("reasoning", "mid")
    assert v.schedule == [0, 1, 2, 1, 2, 3]
    assert v.train.max_steps == 7
    assert v.train.global_batch_size == raw["reasoning"]["train"]["global_batch_size"]


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda r: r["reasoning"]["variants"]["base"]["schedule"].update(pattern="zigzag"),
         "reasoning.variants.base.schedule.pattern: unknown pattern 'zigzag'"),
        (lambda r: r["models"]["r2"].update(n_head=3),
         "models.r2.n_head: 3 heads do not divide d_model 128"),
        (lambda r: r["reasoning"]["variants"]["base"].pop("model"),
         "reasoning.variants.base.model: missing"),
        (lambda r: r["reasoning"]["variants"]["base"].update(model="r9"),
         "reasoning.variants.base.model: unknown model 'r9'"),
        (lambda r: r["knowledge"]["variants"]["w32"].update(data="bios"),
         "knowledge.variants.w32.data: names a missing dataset 'bios'"),
        (lambda r: r["reasoning"]["eval"].update(tests=["op2", "op20"]),
         "reasoning.eval.tests: names a missing dataset 'op20'"),
        (lambda r: r["retrofit"]["variants"]["base"].update(source="nope"),
         "retrofit.variants.base.source: names a missing reasoning variant 'nope'"),
        (lambda r: r["retrofit"]["variants"]["base"].update(method="adapter"),
         "retrofit.variants.base.method: unknown method 'adapter'"),
        (lambda r: r["patterns"].update(cycle="0..L-1"),
         "patterns.cycle: redefines a built-in pattern"),
        (lambda r: r["reasoning"]["variants"]["base"]["schedule"].update(k=-1),
         "reasoning.variants.base.schedule.k: must be >= 0"),
        (lambda r: r["reasoning"]["variants"]["base"].pop("schedule"),
         "reasoning.variants.base.schedule: missing"),
        (lambda r: r["reasoning"]["train"].update(max_step=3),
         "reasoning.train.max_step: unknown key"),
        (lambda r: r["reasoning"]["variants"]["base"].update(train={"seq_len": 4096}),
         "reasoning.variants.base.train.seq_len: 4096 exceeds models.r2.max_seq_len"),
        (lambda r: r["models"]["r2"].update(vocab_size=100), "models.r2.vocab_size: is set from the dataset"),
        (lambda r: r.update(sweep=1), "params.sweep: unknown key"),
        (lambda r: r.pop("hardware"), "hardware: missing section"),
        (lambda r: r["data"]["knowledge"]["rt16k"].update(kind="wiki"), "data.knowledge.rt16k.kind: unknown kind 'wiki'"),
        (lambda r: r["reasoning"]["variants"].update({"a.b": {"model": "r2", "schedule": {"pattern": "base"}}}),
         "reasoning.variants.a.b: 'a.b' is not a valid name"),
        (lambda r: r["hardware"].update(precision="16-mixed"), "hardware.precision: '16-mixed' on CPU"),
        (lambda r: r["data"]["igsm"]["generator"].update(max_opp=3), "data.igsm.generator.max_opp: unknown key"),
        (lambda r: r["data"]["igsm"]["tests"]["op4"].update(op=99), "data.igsm.tests.op4.op: 99 is not in 1.."),
        (lambda r: r["data"]["igsm"]["train"].update(n=0), "data.igsm.train.n: must be >= 1"),
        (lambda r: r["data"].update(igsm={}), "data.igsm: needs generator, train and tests"),
        (lambda r: r["data"].pop("knowledge"), "data.knowledge: missing section"),
    ],
)
def test_bad_params_give_one_line_naming_the_key(edit, expected):
    raw = default_raw()
    edit(raw)
    assert error_of(raw).startswith(expected)


def test_an_explicit_order_is_a_schedule_and_k_must_be_an_integer():
    raw = default_raw()
    raw["reasoning"]["variants"]["base"]["schedule"] = {"pattern": "base", "order": [0, 1, 1, 0]}
    assert P.validate(raw).variant("reasoning", "base").schedule == [0, 1, 1, 0]
    for bad in (True, 1.0):
        raw["reasoning"]["variants"]["base"]["schedule"] = {"pattern": "cycle", "k": bad}
        assert error_of(raw).startswith("reasoning.variants.base.schedule.k: must be an integer")


def test_user_pattern_out_of_range_names_the_variant():
    raw = default_raw()
    raw["patterns"]["far"] = "0..L+1"
    raw["reasoning"]["variants"]["base"]["schedule"] = {"pattern": "far", "k": 0}
    assert error_of(raw).startswith("reasoning.variants.base.schedule.pattern: pattern 'far'")


def test_unused_pattern_with_a_typo_fails_before_any_compute():
    raw = default_raw()
    raw["patterns"]["typo"] = "cycle(0..L-1, k+1"
    assert error_of(raw) == "patterns.typo: expected ')', got end of pattern"
    raw["patterns"]["typo"] = "cycle(0..N-1, k+1)"
    assert error_of(raw) == "patterns.typo: unknown name 'N' (variables: L, k)"
    # errors that depend on L and k are the using variant's to report, at its own L and k
    for fine_for_some_values in ("cycle(0..L-1, k-5)", "cycle(0..L-1, 0..k-1)", "0, L // (k - 1)", "0..L+1"):
        raw["patterns"]["typo"] = fine_for_some_values
        P.validate(raw)
    raw["patterns"]["typo"] = "cycle(0..L-1 k)"  # used: the error names the variant that uses it
    raw["reasoning"]["variants"]["base"]["schedule"] = {"pattern": "typo", "k": 1}
    assert error_of(raw).startswith("reasoning.variants.base.schedule.pattern: pattern 'typo'")


def test_a_missing_params_file_or_a_directory_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"not found \(select a profile: python -m vld.pipeline.profile default\)$"):
        P.load_yaml(tmp_path / "params.yaml")
    with pytest.raises(UserError, match=r"is a directory; expected a params file \(e.g. params.yaml\)$"):
        P.load_yaml(tmp_path)


def test_yaml_syntax_error_is_one_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("profile: x\nmodels: {r2: [\n")
    with pytest.raises(UserError) as info:
        P.load_pipeline(bad)
    assert str(info.value).startswith(f"{bad}: not valid YAML")


def _cli(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_params_cli_reports_one_line_without_traceback(tmp_path):
    raw = default_raw()
    raw["models"]["r2"]["n_head"] = 5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = _cli(["-m", "vld.pipeline.params"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "vld: error: models.r2.n_head: 5 heads do not divide d_model 128"
    ok = _cli(["-m", "vld.pipeline.params", "--file", str(ROOT / "params.yaml")], tmp_path)
    assert ok.returncode == 0 and "profile 'default': valid" in ok.stdout


def test_profile_select_writes_params_and_refuses_bad_ones(tmp_path):
    profiles = tmp_path / "conf" / "profiles"
    shutil.copytree(ROOT / "conf" / "profiles", profiles)
    target = tmp_path / "params.yaml"
    select("tiny", target, profiles)
    assert target.read_text() == (profiles / "tiny.yaml").read_text()
    with pytest.raises(UserError, match=r"^profile: no profile 'huge'"):
        select("huge", target, profiles)
    raw = P.load_yaml(profiles / "tiny.yaml")
    broken = copy.deepcopy(raw)
    broken["models"]["t2"]["n_head"] = 3
    (profiles / "broken.yaml").write_text(yaml.safe_dump({**broken, "profile": "broken"}))
    with pytest.raises(UserError, match=r"^models.t2.n_head"):
        select("broken", target, profiles)
    assert target.read_text() == (profiles / "tiny.yaml").read_text()  # untouched
    (profiles / "other.yaml").write_text(yaml.safe_dump(raw))  # says profile: tiny
    with pytest.raises(UserError, match="must equal the file name 'other'"):
        select("other", target, profiles)


def _dvc_env():
    env = dict(os.environ, DVC_NO_ANALYTICS="1", VLD_TRACKING="0")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


@pytest.fixture
def dvc_repo(dvc_project):
    env = _dvc_env()
    run = lambda *cmd: subprocess.run(cmd, cwd=dvc_project, env=env, check=True, capture_output=True, timeout=120)
    run("git", "init", "-q")
    run("git", "config", "user.email", "t@example.com")
    run("git", "config", "user.name", "t")
    run("dvc", "init", "-q")
    return dvc_project, env


@pytest.mark.slow
def test_bad_params_stop_dvc_repro_at_the_first_stage(dvc_repo):
    repo, env = dvc_repo
    raw = P.load_yaml(ROOT / "conf/profiles/tiny.yaml")
    raw["models"]["t2"]["n_head"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("vld: error:")]
    assert errors == ["vld: error: models.t2.n_head: 3 heads do not divide d_model 32"]
    assert output.count("Running stage") == 1  # stopped at the first stage
    assert not (repo / "data").exists() and not (repo / "results").exists()

    # a variant without a model: dvc.yaml cannot even be read; DVC says so in one line
    del raw["reasoning"]["variants"]["cycle_x1"]["model"]
    raw["models"]["t2"]["n_head"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in output and "Running stage" not in output
    assert "item.model" in output and len(output.strip().splitlines()) == 1


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the machine without a GPU")
@pytest.mark.parametrize("stage", [["vld.pipeline.pretrain", "--family", "reasoning", "--variant", "base"],
                                   ["vld.pipeline.retrofit", "--family", "retrofit", "--variant", "cycle_x1"],
                                   ["vld.pipeline.evaluate", "--family", "knowledge", "--variant", "w16"]])
def test_gpu_profile_on_a_machine_without_gpu_stops_each_stage_in_one_line(tmp_path, stage):
    shutil.copy(ROOT / "conf" / "profiles" / "gpu-smoke.yaml", tmp_path / "params.yaml")
    proc = _cli(["-m", *stage], tmp_path)  # no data, no trained model: the device check comes first
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("vld: error: hardware.accelerator: 'gpu', but torch ")
    assert proc.stderr.strip().endswith("sees no CUDA GPU on this machine (the CPU profiles: tiny, default, cpu-2h)")
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]  # nothing written


def _failing_frames(error: pytest.ExceptionInfo) -> list[str]:
    """The modules of the frames that led to the call of vld.errors.fail behind this error, the
    caller of fail last (through a re-raise that only renamed the location, e.g.
    TrainConfig.from_layers)."""
    exc = error.value
    while exc is not None:
        frames = []
        tb = exc.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        for i, frame in enumerate(frames):
            if frame.f_code.co_name == "fail" and frame.f_globals["__name__"] == "vld.errors":
                return [f.f_globals["__name__"] for f in frames[:i]]
        exc = exc.__context__
    raise AssertionError("no call of vld.errors.fail behind this error")


def _origin_of(error: pytest.ExceptionInfo) -> str:
    """The module that owns the setting of this error: the one that called vld.errors.fail, or
    that called the one key check (vld.declared.check_keys) which did."""
    modules = [name for name in _failing_frames(error) if name != "vld.declared"]
    return modules[-1]


@pytest.mark.parametrize("edit, where, owner", [
    (lambda r: r["data"]["igsm"]["generator"].update(max_op=0), "data.igsm.generator.max_op", "vld.data.igsm.generator"),
    (lambda r: r["data"]["igsm"]["train"].update(n=0), "data.igsm.train.n", "vld.data.igsm.sets"),
    (lambda r: r["data"]["knowledge"]["rt16k"].update(n=1), "data.knowledge.rt16k.n",
     "vld.data.knowledge.random_tokens"),
    (lambda r: r["data"]["knowledge"].update(bios={"kind": "biographies", "people": 10**12}),
     "data.knowledge.bios.people", "vld.data.knowledge.biographies"),
    (lambda r: r["data"].update(khop={"kh": {"alphabet": 1}}), "data.khop.kh.alphabet", "vld.data.khop"),
    (lambda r: r["models"]["r2"].update(n_head=3), "models.r2.n_head", "vld.model.config"),
    (lambda r: r["models"]["r2"].update(cpu_gemm="blas"), "models.r2.cpu_gemm", "vld.model.backend"),
    (lambda r: r["hardware"].update(cpu_gemm="mkl"), "hardware.cpu_gemm", "vld.model.backend"),
    (lambda r: r["reasoning"]["train"]["optim"].update(lr=0), "reasoning.train.optim.lr", "vld.train.config"),
    (lambda r: r["reasoning"]["eval"].update(max_new_tokens=0), "reasoning.eval.max_new_tokens", "vld.eval.variant"),
    (lambda r: r["knowledge"]["eval"].update(max_new_tokens=3), "knowledge.eval.max_new_tokens", "vld.eval.variant"),
    (lambda r: r["retrofit"]["variants"]["base"].update(lora_rank=0), "retrofit.variants.base.lora_rank",
     "vld.retrofit.methods"),
    (lambda r: r["reasoning"]["variants"]["base"]["schedule"].update(k=-1), "reasoning.variants.base.schedule.k",
     "vld.model.schedule"),
])
def test_each_setting_is_checked_by_its_owner_in_one_message(edit, where, owner):
    raw = default_raw()
    edit(raw)
    with pytest.raises(UserError) as info:
        P.validate(raw, "params.yaml")
    assert str(info.value).startswith(where + ":") and "\n" not in str(info.value)
    assert _origin_of(info) == owner


@pytest.mark.parametrize("edit, where, owner", [
    (lambda r: r.update(sweep=1), "params.sweep", "vld.pipeline.params"),
    (lambda r: r["data"].update(wiki={}), "data.wiki", "vld.pipeline.params"),
    (lambda r: r["data"]["igsm"].update(extra={}), "data.igsm.extra", "vld.data.igsm.sets"),
    (lambda r: r["data"]["igsm"]["train"].update(op=3), "data.igsm.train.op", "vld.data.igsm.sets"),
    (lambda r: r["data"]["igsm"]["generator"].update(max_opp=3), "data.igsm.generator.max_opp",
     "vld.data.igsm.generator"),
    (lambda r: r["data"]["knowledge"]["rt16k"].update(size=1), "data.knowledge.rt16k.size", "vld.data.knowledge.specs"),
    (lambda r: r["data"].update(khop={"kh": {"hops": 1}}), "data.khop.kh.hops", "vld.data.khop"),
    (lambda r: r["models"]["r2"].update(widht=3), "models.r2.widht", "vld.model.config"),
    (lambda r: r["hardware"].update(gpus=1), "hardware.gpus", "vld.pipeline.params"),
    (lambda r: r["reasoning"].update(sweep={}), "reasoning.sweep", "vld.pipeline.params"),
    (lambda r: r["reasoning"]["train"].update(max_step=3), "reasoning.train.max_step", "vld.train.config"),
    (lambda r: r["reasoning"]["train"]["optim"].update(beta=1), "reasoning.train.optim.beta", "vld.train.config"),
    (lambda r: r["reasoning"]["eval"].update(batchsize=3), "reasoning.eval.batchsize", "vld.eval.variant"),
    (lambda r: r["reasoning"]["variants"]["base"].update(data="x"), "reasoning.variants.base.data",
     "vld.pipeline.params"),
    (lambda r: r["reasoning"]["variants"]["base"]["schedule"].update(kk=1), "reasoning.variants.base.schedule.kk",
     "vld.model.schedule"),
    (lambda r: r.update(report={"numbers": 1}), "report.numbers", "vld.pipeline.params"),
])
def test_an_unknown_key_in_each_section_is_one_line_from_its_owner_through_one_check(edit, where, owner):
    raw = default_raw()
    edit(raw)
    with pytest.raises(UserError) as info:
        P.validate(raw, "params.yaml")
    assert str(info.value).startswith(f"{where}: unknown key (known: ") and "\n" not in str(info.value)
    assert _failing_frames(info)[-1] == "vld.declared"  # the one mechanism raised it
    assert _origin_of(info) == owner


def test_train_settings_are_validated_once_per_variant(monkeypatch):
    from vld.train.config import OptimConfig, TrainConfig

    calls = {"optim": 0, "train": 0}
    for cls, key in ((OptimConfig, "optim"), (TrainConfig, "train")):
        original = cls.validate

        def counted(self, where="x", _original=original, _key=key):
            calls[_key] += 1
            return _original(self, where)
        monkeypatch.setattr(cls, "validate", counted)
    pipeline = P.validate(default_raw(), "params.yaml")
    n_variants = sum(len(table) for table in pipeline.variants.values())
    assert calls == {"optim": n_variants, "train": n_variants}


def test_typed_variant_and_one_tags_per_variant():
    from vld.model.config import ModelConfig
    from vld.train.config import TrainConfig

    pipeline = P.load_pipeline(ROOT / "conf/profiles/tiny.yaml")
    v = pipeline.variant("khop", "cycle_x1")
    assert isinstance(v.model, ModelConfig) and isinstance(v.train, TrainConfig)
    assert v.schedule == [0, 1, 0, 1] and v.model.vocab_size == pipeline.data["khop"]["kh12"].vocab_size
    assert v.train.seq_len == pipeline.data["khop"]["kh12"].seq_len  # set by the data
    assert v.tags() == {"vld.family": "khop", "vld.pattern": "cycle", "vld.k": 1, "vld.effective_depth": 4,
                        "vld.model": "h16", "vld.data": "kh12", "vld.seed": 0, "vld.seeds": 2}
    raw = P.load_yaml(ROOT / "conf/profiles/tiny.yaml")
    raw["khop"]["train"]["seq_len"] = 9
    with pytest.raises(UserError, match=r"^khop.train.seq_len: is set by the data"):
        P.validate(raw)


def test_khop_context_comes_from_the_data_when_the_model_leaves_it_out():
    raw = P.load_yaml(ROOT / "conf/profiles/tiny.yaml")
    raw["models"]["h16"].pop("max_seq_len")
    raw["reasoning"]["variants"]["base"]["model"] = "h16"  # the same model, used by another family
    raw["reasoning"]["train"]["seq_len"] = 48
    pipeline = P.validate(raw)
    length = raw["data"]["khop"]["kh12"]["length"]
    assert pipeline.variant("khop", "base").model.max_seq_len == length + 1
    assert pipeline.variant("khop", "base").train.seq_len == length + 1
    assert pipeline.variant("reasoning", "base").model.max_seq_len == 1024  # ModelConfig's default: not k-hop's
    # written: kept (the tiny profile's 16), and one the sequences do not fit is one line naming the data
    assert P.load_pipeline(ROOT / "conf/profiles/tiny.yaml").variant("khop", "base").model.max_seq_len == 16
    raw["models"]["h16"]["max_seq_len"] = length
    raw["reasoning"]["variants"]["base"]["model"] = "t2"
    assert error_of(raw).startswith(f"data.khop.kh12.length: {length + 1} exceeds models.h16.max_seq_len {length}")


# ------------------------------------------------------------------------------ seeds


def _khop_seeds(variant_extra=None, family_train=None, variant_train=None):
    raw = P.load_yaml(ROOT / "conf/profiles/tiny.yaml")
    spec = {"model": "h16", "data": "kh12", "schedule": {"pattern": "base", "k": 0}, **(variant_extra or {})}
    if variant_train is not None:
        spec["train"] = variant_train
    raw["khop"]["variants"] = {"v": spec}
    raw["khop_retrofit"]["variants"] = {}
    raw["khop"]["train"].update(family_train or {})
    return P.validate(raw).variant("khop", "v")


def test_seeds_are_an_axis_with_the_most_specific_setting_deciding():
    assert _khop_seeds().seeds == (0,)
    assert _khop_seeds({"seed": 4}).seeds == (4,)
    assert _khop_seeds({"seeds": 3}).seeds == (0, 1, 2)  # a count
    assert _khop_seeds({"seeds": [5, 2]}).seeds == (5, 2)
    assert _khop_seeds(family_train={"seeds": 3}).seeds == (0, 1, 2)  # the family's train block
    assert _khop_seeds({"seed": 7}, family_train={"seeds": 3}).seeds == (7,)  # the variant's own key wins
    assert _khop_seeds(variant_train={"seeds": [1]}, family_train={"seeds": 3}).seeds == (1,)
    v = _khop_seeds({"seeds": [5, 2]})
    per_seed = v.per_seed()
    assert [s.seed for s in per_seed] == [5, 2] and [s.train.seed for s in per_seed] == [5, 2]
    assert all(s.seeds == (5, 2) for s in per_seed)
    # each seed is its own run: own fingerprint and MLflow params, the same settings otherwise
    assert len({s.fingerprint() for s in per_seed}) == 2
    assert [s.flat_params()["seed"] for s in per_seed] == [5, 2] and per_seed[0].flat_params()["seeds"] == "5,2"
    a, b = (s.to_dict() for s in per_seed)
    assert {k for k in a if a[k] != b[k]} == {"seed", "train"}
    assert {k for k in a["train"] if a["train"][k] != b["train"][k]} == {"seed"}


@pytest.mark.parametrize("extra,family_train,message", [
    ({"seeds": 0}, None, r"^khop.variants.v.seeds: a seed count must be >= 1, got 0$"),
    ({"seeds": []}, None, r"^khop.variants.v.seeds: must be a count .* got \[\]$"),
    ({"seeds": [1, 1]}, None, r"^khop.variants.v.seeds: lists a seed twice: \[1, 1\]$"),
    ({"seeds": [1, -2]}, None, r"^khop.variants.v.seeds: must be a count"),
    ({"seeds": True}, None, r"^khop.variants.v.seeds: must be a count"),
    ({"seeds": 2, "seed": 1}, None, r"^khop.variants.v.seeds: give seed \(one\) or seeds \(several\), not both$"),
    ({"seed": "a"}, None, r"^khop.variants.v.seed: must be a count"),
    (None, {"seeds": "x"}, r"^khop.train.seeds: must be a count"),
    # Lightning's seed_everything raises past 2**32 - 1: caught here, not once training starts
    ({"seeds": [0, 2**32]}, None, r"^khop.variants.v.seeds: a seed must be <= 4294967295 \(2\*\*32 - 1\), got 4294967296$"),
    ({"seed": 2**40}, None, r"^khop.variants.v.seed: a seed must be <= 4294967295"),
])
def test_bad_seeds_are_one_line_naming_the_key(extra, family_train, message):
    with pytest.raises(UserError, match=message):
        _khop_seeds(extra, family_train)


def test_the_largest_seed_lightning_takes_is_accepted():
    from vld.train.config import TrainConfig

    assert _khop_seeds({"seeds": [2**32 - 1]}).seeds == (2**32 - 1,)
    cfg = dict(max_steps=1, global_batch_size=1, micro_batch_size=1, seq_len=4)
    assert TrainConfig.from_dict({**cfg, "seed": 2**32 - 1}).seed == 2**32 - 1
    with pytest.raises(UserError, match=r"^train.seed: must be <= 4294967295"):
        TrainConfig.from_dict({**cfg, "seed": 2**32})


def test_a_retrofit_inherits_its_sources_seeds_and_refuses_others():
    raw = P.load_yaml(ROOT / "conf/profiles/tiny.yaml")
    raw["reasoning"]["variants"]["base"]["seeds"] = [0, 3]
    assert P.validate(raw).variant("retrofit", "cycle_x1").seeds == (0, 3)
    raw["retrofit"]["variants"]["cycle_x1"]["seeds"] = [3]
    assert P.validate(raw).variant("retrofit", "cycle_x1").seeds == (3,)
    raw["retrofit"]["variants"]["cycle_x1"]["seeds"] = [1]
    with pytest.raises(UserError, match=r"^retrofit.variants.cycle_x1.seeds: seed 1 is not a seed of "
                                        r"reasoning.variants.base \(its seeds: \[0, 3\]\)"):
        P.validate(raw)
    # the k-hop retrofit: the same, from a k-hop source; its data is its source's
    raw["retrofit"]["variants"]["cycle_x1"]["seeds"] = [3]
    raw["khop"]["variants"]["base"]["seeds"] = 3
    khop = P.validate(raw).variant("khop_retrofit", "cycle_x1")
    assert (khop.seeds, khop.source, khop.data, khop.model_name, khop.schedule) == ((0, 1, 2), "base", "kh12", "h16",
                                                                                    [0, 1, 0, 1])
    assert khop.train.seq_len == 13 and khop.model.max_seq_len == 16  # the stream's length + 1; the model's own
    raw["khop_retrofit"]["variants"]["cycle_x1"]["seeds"] = [4]
    with pytest.raises(UserError, match=r"^khop_retrofit.variants.cycle_x1.seeds: seed 4 is not a seed of "
                                        r"khop.variants.base \(its seeds: \[0, 1, 2\]\)"):
        P.validate(raw)
    raw["khop_retrofit"]["variants"]["cycle_x1"] = {"source": "answer_only", "schedule": {"pattern": "cycle", "k": 1}}
    with pytest.raises(UserError, match=r"^khop_retrofit.variants.cycle_x1.source: names a missing khop variant "
                                        r"'answer_only' \(khop.variants has: base, cycle_x1, cycle_x1_layers1-1\)$"):
        P.validate(raw)
    raw["khop_retrofit"]["variants"]["cycle_x1"] = {"source": "base", "data": "kh12",
                                                    "schedule": {"pattern": "cycle", "k": 1}}
    with pytest.raises(UserError, match=r"^khop_retrofit.variants.cycle_x1.data: unknown key"):
        P.validate(raw)


# ------------------------------------------------------- sizes and contexts the machine cannot run

def _refused(tmp_path, raw, *stage) -> str:
    """The one error line of `python -m vld.pipeline.params` (or of a stage) on `raw`; nothing
    but params.yaml and what was there before is left in tmp_path."""
    before = sorted(p.name for p in tmp_path.iterdir())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = _cli(["-m", *(stage or ["vld.pipeline.params"])], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, "params.yaml"})  # nothing written
    return proc.stderr.strip().removeprefix("vld: error: ")


def _tiny_with_igsm_tests(tmp_path) -> tuple[dict, int]:
    """The tiny profile and its iGSM test set generated where the stage writes it; the longest
    prompt (problem <sep>) as evaluation builds it from problems.jsonl."""
    import json

    from vld.data.igsm import generate_dataset
    from vld.data.igsm.tokenizer import IgsmTokenizer

    raw = P.load_yaml(ROOT / "conf/profiles/tiny.yaml")
    igsm = P.validate(copy.deepcopy(raw)).data["igsm"]
    test = igsm.tests["op2"]
    out = tmp_path / "data" / "igsm" / "tests" / "op2"
    generate_dataset(igsm.generator, "test", test.n, test.seed, out, op=test.op, workers=1, progress=False)
    tokenizer = IgsmTokenizer.load(out)
    problems = [json.loads(line)["problem"] for line in (out / "problems.jsonl").read_text().splitlines()]
    return raw, max(len(tokenizer.prompt_ids(problem)) for problem in problems)


def test_a_context_shorter_than_the_longest_igsm_prompt_is_refused_before_training(tmp_path):
    raw, longest = _tiny_with_igsm_tests(tmp_path)
    del raw["reasoning"]["variants"]["answer_only"]  # trains on rows of 512 tokens
    raw["models"]["t2"]["max_seq_len"] = longest
    expected = (f"models.t2.max_seq_len: {longest} leaves no room to answer the longest prompt of data.igsm.tests.op2"
                f" ({longest} tokens), which reasoning.variants.base is evaluated on; give at least {longest + 1}")
    assert _refused(tmp_path, raw) == expected
    # the training stage stops on it before any compute (no MLflow run, no checkpoint, no output)
    assert _refused(tmp_path, raw, "vld.pipeline.pretrain", "--family", "reasoning", "--variant", "base") == expected
    raw["models"]["t2"]["max_seq_len"] = longest + 1  # one token to answer in: valid
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    ok = _cli(["-m", "vld.pipeline.params"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    # before the test set exists, or when it is another set than params.yaml describes (stale:
    # DVC regenerates it first), validation cannot know and passes; the stage checks it later
    raw["models"]["t2"]["max_seq_len"] = longest
    raw["data"]["igsm"]["tests"]["op2"]["n"] += 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert _cli(["-m", "vld.pipeline.params"], tmp_path).returncode == 0
    shutil.rmtree(tmp_path / "data")
    assert _cli(["-m", "vld.pipeline.params"], tmp_path).returncode == 0


def _memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _tiny_edit(edit):
    raw = P.load_yaml(ROOT / "conf/profiles/tiny.yaml")
    edit(raw)
    return raw


@pytest.mark.parametrize("edit, start, needed", [
    # 10**12 steps of two micro-batches (8 sequences / 4) at 10 us each at least: 231 days
    (lambda r: r["khop"]["train"].update(max_steps=10**12),
     f"khop.train.max_steps: pretrain_khop@base would train for at least {10**12 * 2 * 1e-5 / 86400:,.0f} days", 0),
    (lambda r: r["data"]["khop"]["kh12"].update(length=40, min_hops=0, max_hops=200),
     "data.khop.kh12.max_hops: 200 hops cannot fit in sequences of length 40", 0),
    # one hop count's test sequences, inputs and labels as int64: 2 x 8 x 10**12 x 13 bytes
    (lambda r: r["data"]["khop"]["kh12"].update(test_sequences=10**12),
     "data.khop.kh12.test_sequences: data_khop@kh12 needs at least 189 TiB of memory", 2 * 8 * 10**12 * 13),
    # 2 layers of 12 d^2 weights, 16 bytes each with gradients and AdamW's moments: 384 TiB
    (lambda r: r["models"]["k16"].update(d_model=2**20),
     "models.k16.d_model: pretrain_knowledge@w16 needs at least", 16 * 2 * 12 * 2**40),
    # a step's 10**9 sequences of 13 tokens generated at once (inputs, labels: int64) + their order
    (lambda r: r["khop"]["train"].update(global_batch_size=10**9),
     "khop.train.global_batch_size: pretrain_khop@base needs at least 201 GiB of memory", 10**9 * (16 * 13 + 8)),
    # each hop count's error interval draws its resamples at once: 10**12 x 16 sequences x
    # (int64 indices + two float64 gathers)
    (lambda r: r["khop"]["eval"].update(bootstrap=10**12),
     "khop.eval.bootstrap: evaluate_khop@base needs at least 349 TiB of memory", 24 * 10**12 * 16),
], ids=["max_steps", "hops", "test_sequences", "d_model", "global_batch_size", "bootstrap"])
def test_absurd_sizes_are_one_line_before_any_compute(tmp_path, edit, start, needed):
    if needed and needed <= _memory():
        pytest.skip(f"this machine has {_memory()} bytes: the size fits")
    message = _refused(tmp_path, _tiny_edit(edit))
    assert message.startswith(start), message
    if needed:
        assert re.search(r"more than this machine's [\d.,]+ [KMGTPE]iB$", message), message


@pytest.mark.slow
def test_a_stage_refuses_an_absurd_size_before_its_mlflow_run(tmp_path):
    raw = _tiny_edit(lambda r: r["khop"]["train"].update(max_steps=10**12))
    message = _refused(tmp_path, raw, "vld.pipeline.pretrain", "--family", "khop", "--variant", "base")
    assert message.startswith("khop.train.max_steps: pretrain_khop@base would train for at least")


@pytest.mark.parametrize("block", ["gpt2", "llama"])
def test_the_memory_bounds_are_lower_bounds(block):
    import numpy as np

    from vld.data.khop import KHopSpec, make_sequences
    from vld.model import VLDTransformer
    from vld.model.config import ModelConfig
    from vld.pipeline.resources import khop_batch_bytes, parameters_at_least

    for shape in ({"n_layer": 2, "d_model": 32, "n_head": 2}, {"n_layer": 3, "d_model": 96, "n_head": 4}):
        config = ModelConfig(vocab_size=50, max_seq_len=64, block=block, schedule=list(range(shape["n_layer"])) * 2,
                             **shape)
        model = VLDTransformer(config)
        assert parameters_at_least(config) <= model.parameter_count() == sum(p.numel() for p in model.parameters())
    spec = KHopSpec(alphabet=4, length=12, max_hops=3)
    inputs, labels = make_sequences(spec, np.random.default_rng(0), np.full(10, 2))
    assert khop_batch_bytes(10, spec.length) == inputs.nbytes + labels.nbytes


def test_the_bootstrap_bound_is_what_the_bootstrap_holds():
    import numpy as np

    from vld.stats import bootstrap_bytes

    # vld.stats._resampled_ratios' arrays, made here as it makes them
    num, den = np.arange(7, dtype=np.float64), np.ones(7)
    picks = np.random.default_rng(0).integers(0, 7, size=(50, 7))
    assert bootstrap_bytes(50, 7) == picks.nbytes + num[picks].nbytes + den[picks].nbytes


def test_a_size_set_on_the_variant_is_named_there():
    if _memory() >= 10**9 * (16 * 13 + 8):
        pytest.skip("this machine holds a k-hop batch of 10**9 sequences")
    raw = P.load_yaml(ROOT / "conf/profiles/tiny.yaml")
    raw["khop"]["variants"]["base"]["train"] = {"global_batch_size": 10**9}
    message = error_of(raw)
    assert message.startswith("khop.variants.base.train.global_batch_size: pretrain_khop@base needs at least")
