"""The machine-dependent run settings of params.yaml's hardware block: `threads` (CPU threads per
process) and `cpu_gemm` (auto: chosen by the CPU's vendor and vector width). Each is a value once the config
is built, the run applies exactly it whatever else the machine is doing, and a stage records it
(metrics, MLflow params, the variant's fingerprint, the resume check)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from vld.errors import UserError
from vld.machine import across_ranks, describe_cpu, describe_machine, machine_label
from vld.model.backend import Backend, cpu_gemm_for, machine_cpu_gemm
from vld.pipeline import params as P
from vld.pipeline.tracking.stage import machine_tags
from vld.train.config import TrainConfig, apply_threads, busy_note
from vld.train.datamodules import TokenWindowDataModule
from golden_loss import tiny_model, tiny_train_config
from user_errors import one_line
from vld.train.run import run_training

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"max_steps": 4, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 8}

# /proc/cpuinfo's first lines on three kinds of machine (the AMD one is this project's
# development machine; the ARM one names no vendor_id at all)
AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep avx2 avx512f avx512bw
"""
INTEL = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep avx2 avx512f amx_tile
"""
ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd0c
"""


@pytest.fixture(autouse=True)
def keep_thread_count():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)



def train(data: Path, out: Path, **overrides):
    cfg = tiny_train_config(**overrides)
    model = tiny_model(seed=0, backend=cfg.backend)
    dm = TokenWindowDataModule(data, cfg.seq_len, cfg.micro_batch_size, seed=cfg.seed)
    return model, run_training(model, dm, cfg, out)


# ----------------------------------------------------------------------------- threads: the setting

def test_threads_default_to_the_usable_cores_shared_by_the_processes_of_a_node():
    cores = len(os.sched_getaffinity(0))
    assert TrainConfig.from_dict(SIZES).threads == cores
    four = TrainConfig.from_dict({**SIZES, "global_batch_size": 16, "devices": 4})
    assert four.threads == max(1, cores // 4)
    assert TrainConfig.from_dict({**SIZES, "threads": 3}).threads == 3
    cfg = TrainConfig.from_dict({**SIZES, "threads": 3})
    assert cfg.to_dict()["threads"] == 3 and TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_threads_are_a_hardware_key_a_family_may_override():
    raw = yaml.safe_load((ROOT / "conf/profiles/tiny.yaml").read_text())
    raw["hardware"]["threads"] = 3
    pipeline = P.validate(raw)
    assert {v.train.threads for table in pipeline.variants.values() for v in table.values()} == {3}
    raw["khop"]["train"]["threads"] = 2
    pipeline = P.validate(raw)
    assert {v.train.threads for v in pipeline.variants["khop"].values()} == {2}
    assert {v.train.threads for v in pipeline.variants["reasoning"].values()} == {3}
    before = P.validate(raw).variant("khop", "base")
    raw["hardware"]["threads"] = 1  # the khop block still says 2: its fingerprint stays
    assert P.validate(raw).variant("khop", "base").fingerprint() == before.fingerprint()
    raw["khop"]["train"]["threads"] = 1
    after = P.validate(raw).variant("khop", "base")
    assert after.fingerprint() != before.fingerprint()
    assert after.flat_params()["train.threads"] == 1


@pytest.mark.parametrize("layer, value, expected", [
    ("hardware", 0, "hardware.threads: must be >= 1, got 0"),
    ("hardware", -2, "hardware.threads: must be >= 1, got -2"),
    ("hardware", "two", "hardware.threads: expected an integer, got 'two'"),
    ("hardware", 1.5, "hardware.threads: expected an integer, got 1.5"),
    ("hardware", True, "hardware.threads: expected an integer, got True"),
    ("khop.train", 0, "khop.train.threads: must be >= 1, got 0"),
])
def test_a_bad_thread_count_is_one_line_naming_the_key(layer, value, expected):
    raw = yaml.safe_load((ROOT / "conf/profiles/tiny.yaml").read_text())
    block = raw["hardware"] if layer == "hardware" else raw["khop"]["train"]
    block["threads"] = value
    with pytest.raises(UserError) as err:
        P.validate(raw)
    assert one_line(err) == expected


def test_a_resume_with_another_thread_count_is_refused(tiny_data, tmp_path):
    train(tiny_data, tmp_path / "run", threads=1, max_steps=2)
    with pytest.raises(UserError) as err:
        train(tiny_data, tmp_path / "run", threads=2, max_steps=2)
    assert re.fullmatch(r"train\.threads: 1 in the checkpoint \S+last\.ckpt, 2 now; delete \S+ to start over",
                        one_line(err))


def test_apply_threads_sets_exactly_the_count():
    for threads in (2, 1):
        cfg = TrainConfig.from_dict({**SIZES, "threads": threads})
        torch.set_num_threads(3)
        assert apply_threads(cfg) == threads and torch.get_num_threads() == threads


@pytest.mark.slow
def test_every_ddp_rank_trains_with_the_count_set(tiny_data, tmp_path):
    """Lightning's DDP launcher sets its own count (the cores / processes) when OMP_NUM_THREADS
    is unset; the setting is put back in each rank. Asked for one more thread than that."""
    threads = max(1, len(os.sched_getaffinity(0)) // 2) + 1
    train = {"devices": 2, "strategy": "ddp", "micro_batch_size": 4, "max_steps": 2, "threads": threads}
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests/scripts/train_script.py"), "--data", str(tiny_data),
                           "--out", str(tmp_path / "ddp"), "--train", json.dumps(train)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "ddp" / "metrics.json").read_text())["threads"] == threads


# ----------------------------------------------------------------------------- threads: a busy machine

def test_the_busy_note_suggests_a_count_and_names_the_setting():
    assert busy_note(2, 1.0, 2) == ("vld: note: other processes keep about 1.0 of 2 cores busy; training with"
                                    " hardware.threads=2 as set; hardware.threads=1 may run faster here")
    assert busy_note(2, 0.3, 2) is None  # less than half a core busy: nothing to say
    assert busy_note(1, 1.7, 2) is None  # one thread is the least there is
    assert busy_note(16, 4.2, 16, processes=4) == (
        "vld: note: other processes keep about 4.2 of 16 cores busy; training with hardware.threads=16 as set;"
        " hardware.threads=3 may run faster here")  # the 12 free cores shared by 4 processes
    assert busy_note(3, 4.2, 16, processes=4) is None
    assert busy_note(2, None, 2) is None  # no /proc/stat


# A neighbour that keeps one core busy for at most a minute; it says when it runs.
BUSY_LOOP = "import time\nend = time.monotonic() + 60\nprint('busy', flush=True)\nwhile time.monotonic() < end:\n    pass\n"


def test_a_busy_neighbour_changes_nothing_but_a_note(tiny_data, tmp_path, capfd):
    """The count asked for is the count used beside a CPU-heavy process: the same weights bit
    for bit as alone. The count matters at this size (one thread gives other weights), so a run
    that lowered it on a busy machine would fail here."""
    cores = len(os.sched_getaffinity(0))
    threads = cores  # the default: one neighbour leaves fewer free cores than that
    alone, metrics_alone = train(tiny_data, tmp_path / "alone", threads=threads)
    neighbour = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], stdout=subprocess.PIPE, text=True)
    try:
        assert neighbour.stdout.readline().strip() == "busy"
        time.sleep(0.5)  # a full share of the CPU before training samples the load
        capfd.readouterr()
        beside, metrics_beside = train(tiny_data, tmp_path / "beside", threads=threads)
        err = capfd.readouterr().err
        assert neighbour.poll() is None, "the neighbour ran for the whole training"
    finally:
        neighbour.kill()
        neighbour.wait()
    assert metrics_alone["threads"] == metrics_beside["threads"] == threads
    assert metrics_alone["loss_curve"] == metrics_beside["loss_curve"]
    a, b = alone.state_dict(), beside.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    notes = [line for line in err.splitlines() if line.startswith("vld: note:")]
    if cores > 1:
        assert len(notes) == 1 and re.fullmatch(
            rf"vld: note: other processes keep about \d+\.\d of {cores} cores busy; training with"
            rf" hardware.threads={threads} as set; hardware.threads=\d+ may run faster here", notes[0]), notes
        one, _ = train(tiny_data, tmp_path / "one", threads=1)
        assert not all(torch.equal(a[key], one.state_dict()[key]) for key in a), \
            "one thread gives the same weights here: this test would not see a lowered count"
    else:
        assert notes == []


# ----------------------------------------------------------------------------- cpu_gemm: auto

def test_auto_cpu_gemm_is_chosen_by_the_cpus_vendor_and_vector_width_from_the_table():
    amd_avx2 = AMD.replace("model\t\t: 17", "model\t\t: 1").replace(" avx512f avx512bw", "")
    intel_avx2 = INTEL.replace(" avx512f", "")
    for _ in range(3):  # the same text, the same library: no timing, no load involved
        assert cpu_gemm_for(AMD) == "onednn"  # AVX-512
        assert cpu_gemm_for(amd_avx2) == "blas"  # AVX2 only: measured on another AMD EPYC
        assert cpu_gemm_for(INTEL) == "blas"
        assert cpu_gemm_for(intel_avx2) == "blas"  # not listed: torch's own GEMMs
        assert cpu_gemm_for(AMD.replace(" avx2 avx512f avx512bw", "")) == "blas"  # neither width
        assert cpu_gemm_for(ARM) == "blas"  # no vendor listed: torch's own GEMMs
        assert cpu_gemm_for(AMD.replace("AuthenticAMD", "HygonGenuine")) == "blas"
        assert cpu_gemm_for("") == "blas"
    try:
        here = Path("/proc/cpuinfo").read_text()
    except OSError:
        here = ""
    assert machine_cpu_gemm() == cpu_gemm_for(here)
    assert Backend().cpu_gemm == machine_cpu_gemm()


def test_a_machine_is_described_from_its_cpuinfo():
    assert describe_cpu(INTEL) == {"cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "cpu_vendor": "GenuineIntel",
                                   "cpu_family": 6, "cpu_model": 143, "cpu_flags": ["avx2", "avx512f"]}
    # only the first processor's block counts: every core reports the same model
    second = AMD.replace("processor\t: 0", "processor\t: 1").replace("AMD EPYC", "another name")
    assert describe_cpu(AMD + "\n" + second) == {"cpu": "AMD EPYC", "cpu_vendor": "AuthenticAMD", "cpu_family": 25,
                                                 "cpu_model": 17, "cpu_flags": ["avx2", "avx512f"]}
    # no vendor, family, model or name on ARM: its implementer and part codes name it, from the text alone
    assert describe_cpu(ARM) == {"cpu": "CPU implementer 0x41 part 0xd0c", "cpu_vendor": None, "cpu_family": None,
                                 "cpu_model": None, "cpu_flags": []}
    assert describe_cpu("") == {"cpu": None, "cpu_vendor": None, "cpu_family": None, "cpu_model": None, "cpu_flags": []}
    here = describe_machine()
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    from_text = describe_cpu(text)
    assert here == {**from_text, "cpu": from_text["cpu"] or here["cpu"], "cores": os.cpu_count(), "torch": here["torch"]}
    assert isinstance(here["cpu"], str) and here["cpu"]  # the platform's name where the text has none
    assert here["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert machine_label({**describe_cpu(INTEL), "torch": "2.13.0", "threads": 2, "cpu_gemm": "blas"}) == (
        "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz (GenuineIntel, family 6 model 143), avx2 avx512f, "
        "torch 2.13.0, threads 2, cpu_gemm blas")
    assert machine_label({}) == "unknown machine"


def test_a_run_across_machines_records_every_ranks_machine():
    intel, amd = {**describe_cpu(INTEL), "cores": 2}, {**describe_cpu(AMD), "cores": 2}
    assert across_ranks([intel, dict(intel)]) == intel  # one kind of machine: rank 0's, nothing more
    assert across_ranks([intel, amd, intel]) == {**intel, "ranks": [intel, amd, intel]}
    assert machine_label(across_ranks([intel, amd, intel])) == machine_label(intel) + (
        " (rank 0's; 3 ranks on 2 kinds of machine)")  # the report cannot mistake it for one machine
    # MLflow tags: rank 0's fields, lists space-separated, and how many ranks the record lists
    assert machine_tags(across_ranks([intel, amd, intel])) == {
        "vld.machine.cpu": "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "vld.machine.cpu_vendor": "GenuineIntel",
        "vld.machine.cpu_family": "6", "vld.machine.cpu_model": "143", "vld.machine.cpu_flags": "avx2 avx512f",
        "vld.machine.cores": "2", "vld.machine.ranks": "3"}
    assert "vld.machine.ranks" not in machine_tags(across_ranks([intel, dict(intel)]))


def test_cpu_gemm_auto_is_the_default_and_becomes_a_library():
    assert TrainConfig.from_dict(SIZES).cpu_gemm == machine_cpu_gemm()
    assert TrainConfig.from_dict({**SIZES, "cpu_gemm": "auto"}).cpu_gemm == machine_cpu_gemm()
    for library in ("onednn", "blas"):
        cfg = TrainConfig.from_dict({**SIZES, "cpu_gemm": library})
        assert cfg.cpu_gemm == library and cfg.backend == Backend(library) and cfg.to_dict()["cpu_gemm"] == library
    raw = yaml.safe_load((ROOT / "conf/profiles/tiny.yaml").read_text())
    raw["hardware"]["cpu_gemm"] = "mkl"
    with pytest.raises(UserError) as err:
        P.validate(raw)
    assert one_line(err) == "hardware.cpu_gemm: unknown CPU GEMM library 'mkl' (known: auto, onednn, blas)"


def test_a_resume_on_a_cpu_that_picks_another_library_is_refused(tiny_data, tmp_path):
    here = machine_cpu_gemm()
    other = "blas" if here == "onednn" else "onednn"
    train(tiny_data, tmp_path / "run", cpu_gemm=other, max_steps=2)  # as "auto" on the other kind of CPU
    with pytest.raises(UserError) as err:
        train(tiny_data, tmp_path / "run", cpu_gemm="auto", max_steps=2)
    assert one_line(err).startswith(f"train.cpu_gemm: '{other}' in the checkpoint ")


# ----------------------------------------------------------------------------- a stage records both

def test_a_stage_records_and_applies_its_threads_and_cpu_gemm(tmp_path, monkeypatch):
    """The k-hop training stage of the tiny profile with MLflow on: metrics, config, MLflow
    params and metrics carry the values; evaluation runs with the same thread count."""
    from mlflow.tracking import MlflowClient

    from vld.pipeline import data_khop, evaluate, pretrain

    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "conf/profiles/tiny.yaml", repo / "params.yaml")
    monkeypatch.chdir(repo)
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VLD_TRACKING", "1")
    pipeline = P.load_pipeline(repo / "params.yaml")
    variant = pipeline.variant("khop", "base")
    assert variant.train.threads == 1  # the tiny profile sets it
    torch.set_num_threads(2)
    assert pretrain.main(["--family", "khop", "--variant", "base"]) == 0
    out = repo / "results/pretrain/khop/base/seed0"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threads"] == 1 and metrics["cpu_gemm"] == machine_cpu_gemm() and metrics["precision"] == "32-true"
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["threads"] == 1 and config["train"]["cpu_gemm"] == machine_cpu_gemm()
    assert json.loads((out / "variant.json").read_text())["sha256"] == variant.fingerprint()

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = {r.data.tags.get("vld.stage_key"): r for r in client.search_runs([experiment.experiment_id])}
    run = runs["pretrain_khop@base/seed0"]
    assert run.data.params["train.threads"] == "1"
    assert run.data.params["train.cpu_gemm"] == machine_cpu_gemm()
    assert run.data.metrics["threads"] == 1.0
    assert metrics["machine"] == describe_machine()  # what the same seed's weights depend on
    assert run.data.tags["vld.machine.cpu"] == describe_machine()["cpu"]
    assert run.data.tags["vld.machine.torch"] == describe_machine()["torch"]

    monkeypatch.setenv("VLD_TRACKING", "0")
    assert data_khop.main(["--dataset", "kh12"]) == 0  # the test sequences
    torch.set_num_threads(2)
    assert evaluate.main(["--family", "khop", "--variant", "base"]) == 0
    assert torch.get_num_threads() == 1
    from vld.pipeline.paths import eval_file

    result = json.loads((repo / eval_file("khop", "base", 0)).read_text())
    assert result["trained_on"] == {**describe_machine(), "threads": 1, "cpu_gemm": machine_cpu_gemm(),
                                    "precision": "32-true"}  # for the report's list of machines
