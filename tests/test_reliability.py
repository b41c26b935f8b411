"""Issue 17, in one process: the faults a user hits give one line and leave earlier outputs
intact (real MLflow sqlite stores, real files; mounts where a read-only or full filesystem
is needed, skipped where this user cannot mount)."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import stat
import subprocess
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from user_errors import one_line
from vld.atomic import atomic_dir, check_replaceable, check_writable, save_torch, write_json
from vld.errors import UserError
from vld.pipeline import tracking

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers

class RunsACommand:
    """Unpickling this runs a shell command (what a crafted checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@contextlib.contextmanager
def mounted(path: Path, options: str):
    """A tmpfs at `path` (skip the test where this user cannot mount)."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite store and a fake pipeline (profile, params file) in a repo directory."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (repo / "params.yaml").write_text("profile: rel\n")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("VLD_TRACKING", "1")
    pipeline = types.SimpleNamespace(profile="rel", path=repo / "params.yaml", variants={})
    return repo, pipeline


def _client(repo: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def _runs(repo: Path) -> dict[str, list]:
    client = _client(repo)
    experiment = client.get_experiment_by_name("rel")
    runs = client.search_runs([experiment.experiment_id], max_results=1000, order_by=["attributes.start_time ASC"])
    out: dict[str, list] = {}
    for run in runs:
        key = "parent" if run.data.tags.get("vld.role") == "pipeline" else run.data.tags["vld.stage_key"]
        out.setdefault(key, []).append(run)
    return out


def _stage(pipeline, name: str, fail_with: BaseException | None = None) -> None:
    with contextlib.suppress(UserError, KeyboardInterrupt):
        with tracking.tracked(pipeline, name, "v", {"x": 1}, {}) as run:
            if fail_with is not None:
                raise fail_with
            run.finish()


# ----------------------------------------------------------------------------- item 2

def test_crafted_checkpoint_does_not_run_its_command(tmp_path):
    from vld.retrofit.sources import inspect_source
    from vld.train.run import _checkpoint_step

    marker = tmp_path / "ran"
    evil = tmp_path / "last.ckpt"
    torch.save({"global_step": 3, "payload": RunsACommand(marker)}, evil)
    with pytest.raises(UserError) as err:
        _checkpoint_step(evil)
    assert "cannot be read as a training checkpoint" in one_line(err)
    with pytest.raises(UserError):
        inspect_source(evil)
    from vld.model import load_model

    with pytest.raises(UserError):
        load_model(evil)
    # a token file carrying a pickled object array
    from vld.data.tokens import TokenSet

    data = tmp_path / "data"
    data.mkdir()
    np.save(data / "tokens.npy", np.array([RunsACommand(marker)], dtype=object), allow_pickle=True)
    np.save(data / "index.npy", np.array([0, 1]))
    (data / "meta.json").write_text(json.dumps({"n_tokens": 1, "n_samples": 1, "vocab_size": 2}))
    with pytest.raises(UserError):
        TokenSet.open(data)
    assert not marker.exists()
    # the same file unpickled in full would have run it: the test can fail
    pickle.loads(pickle.dumps(RunsACommand(marker)))
    assert marker.exists()


def test_no_full_unpickling_anywhere_in_src():
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text and "allow_pickle=True" not in text, path
        assert "pickle.load" not in text, path


# ----------------------------------------------------------------------------- item 3

def test_store_probe_names_the_uri_the_fault_and_the_way_out(tmp_path, monkeypatch):
    def probe(uri: str) -> str:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        start = time.monotonic()
        with pytest.raises(UserError) as err:
            tracking.probe_store()
        assert time.monotonic() - start < 10
        line = one_line(err)
        assert line.startswith(f"MLFLOW_TRACKING_URI={uri}:") and "VLD_TRACKING=off" in line
        return line

    assert "does not exist" in probe(f"sqlite:///{tmp_path}/missing/mlflow.db")
    assert "maintenance mode" in probe(f"file://{tmp_path}/mlruns")
    assert "maintenance mode" in probe(f"{tmp_path}/mlruns")
    assert "no MLflow server answers at 127.0.0.1:9" in probe("http://127.0.0.1:9")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    assert "cannot be used as an sqlite database" in probe(f"sqlite:///{garbage}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/fine.db")
    tracking.probe_store()  # a new store in a writable directory passes
    with mounted(tmp_path / "ro", "ro,size=1m") as ro:
        assert "cannot be written" in probe(f"sqlite:///{ro}/mlflow.db")


def test_tracking_off_needs_no_store(store, monkeypatch):
    repo, pipeline = store
    monkeypatch.setenv("VLD_TRACKING", "off")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    with tracking.tracked(pipeline, "s", "v", {}, {}) as run:
        record = run.finish()
    assert record["run_id"] is None and tracking.record_path("s", "v").is_file()


# ----------------------------------------------------------------------------- item 5 (the rule)

def test_store_root_is_dvcs_original_repository(store, tmp_path, monkeypatch):
    repo, _ = store
    temp = repo / ".dvc" / "tmp" / "exps" / "tmpabc"
    temp.mkdir(parents=True)
    (temp / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(temp)
    assert tracking.tracking_uri() == f"sqlite:///{temp / 'mlflow.db'}"
    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert tracking.tracking_uri() == f"sqlite:///{repo / 'mlflow.db'}"
    assert tracking.record_path("s", "v") == temp / "results/records/s@v.json"  # records stay with the outputs


# ----------------------------------------------------------------------------- item 6

def test_parent_states_follow_the_children(store):
    repo, pipeline = store
    _stage(pipeline, "a")
    runs = _runs(repo)
    assert runs["a@v"][0].info.status == "FINISHED"
    assert runs["parent"][0].info.status == "FINISHED"  # a single stage never leaves it RUNNING
    assert runs["parent"][0].data.tags["vld.pipeline_state"] == "partial"
    # a stage failing before its child exists changes nothing; one failing inside: FAILED
    _stage(pipeline, "b", UserError("x: bad"))
    runs = _runs(repo)
    assert runs["b@v"][0].info.status == "FAILED" and runs["parent"][0].info.status == "FAILED"
    _stage(pipeline, "b")  # the rerun succeeds: the latest attempt of every stage finished
    assert _runs(repo)["parent"][0].info.status == "FINISHED"
    _stage(pipeline, "report")
    runs = _runs(repo)
    assert runs["parent"][0].data.tags["vld.pipeline_state"] == "complete"
    # after a complete pipeline: a failing or interrupted rerun does not undo it
    _stage(pipeline, "a", UserError("x: bad"))
    _stage(pipeline, "b", KeyboardInterrupt())
    runs = _runs(repo)
    assert [r.info.status for r in runs["a@v"]] == ["FINISHED", "FAILED"]
    assert [r.info.status for r in runs["b@v"]] == ["FAILED", "FINISHED", "KILLED"]
    assert len(runs["parent"]) == 1 and runs["parent"][0].info.status == "FINISHED"
    # while a stage runs, its child and the parent are RUNNING
    with tracking.tracked(pipeline, "a", "v", {}, {}) as run:
        runs = _runs(repo)
        assert runs["a@v"][-1].info.status == "RUNNING" and runs["parent"][0].info.status == "RUNNING"
        run.finish()
    assert _runs(repo)["parent"][0].info.status == "FINISHED"


def test_process_tags():
    assert tracking.process_alive(tracking.process_tag())
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    host = tracking.process_tag().rsplit(":", 2)[0]
    assert not tracking.process_alive(f"{host}:{proc.pid}:1")
    assert tracking.process_alive(f"other-host:{proc.pid}:1")  # cannot be known: left alone
    mine = tracking.process_tag().rsplit(":", 1)[0]
    assert not tracking.process_alive(f"{mine}:1")  # same pid, another start time: reused pid


# ----------------------------------------------------------------------------- item 8

def test_read_only_output_is_one_line_before_compute(tmp_path):
    with mounted(tmp_path / "ro", "ro,size=1m") as ro:
        with pytest.raises(UserError) as err:
            check_replaceable(ro / "results" / "pretrain")
        line = one_line(err)
        assert line.startswith(f"{ro / 'results' / 'pretrain'}: cannot be written") and "Read-only" in line


def test_full_disk_is_one_line_and_keeps_the_previous_output(tmp_path):
    with mounted(tmp_path / "small", "size=2m") as small:
        write_json(small / "metrics.json", {"v": 1})
        save_torch(small / "model.pt", {"w": torch.zeros(4)})
        check_writable(small / "out")  # 2 MiB free: passes
        big = {"w": torch.zeros(1 << 20)}  # 4 MiB
        with pytest.raises(UserError) as err:
            save_torch(small / "model.pt", big)
        assert one_line(err).startswith(f"{small / 'model.pt'}: cannot be written (")
        with pytest.raises(UserError) as err:
            with atomic_dir(small / "dir") as tmp:
                save_torch(tmp / "model.pt", big)
        assert one_line(err).startswith(f"{small / 'dir'}: cannot be written (")
        assert torch.load(small / "model.pt", weights_only=True)["w"].shape == (4,)
        assert json.loads((small / "metrics.json").read_text()) == {"v": 1}
        assert sorted(p.name for p in small.iterdir()) == ["metrics.json", "model.pt"]  # no temporaries
        (small / "filler").write_bytes(b"\0" * ((2 << 20) - 64 * 1024))
        with pytest.raises(UserError) as err:
            check_writable(small / "out")
        assert "No space left on device" in one_line(err)


def test_same_size_garbage_in_a_token_file_is_caught_on_open(tmp_path):
    from vld.data.tokens import TokenSet, write_token_set

    path = write_token_set(tmp_path / "d", np.arange(100) % 7, np.array([0, 50, 100]), 7, {})
    assert len(TokenSet.open(path)) == 2
    tokens = path / "tokens.npy"
    raw = bytearray(tokens.read_bytes())
    raw[-10:] = b"\xff" * 10  # ids far outside the vocabulary, same size
    tokens.write_bytes(bytes(raw))
    with pytest.raises(UserError) as err:
        TokenSet.open(path)
    assert one_line(err).startswith(f"{tokens}: content differs from the tokens_sha256 in meta.json")


# ----------------------------------------------------------------------------- item 9

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "f.json", {})
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
        from vld.pipeline.profile import select

        (tmp_path / "profiles").mkdir()
        (tmp_path / "profiles" / "tiny.yaml").write_bytes((ROOT / "conf/profiles/tiny.yaml").read_bytes())
        select("tiny", tmp_path / "params.yaml", tmp_path / "profiles")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((tmp_path / "params.yaml").stat().st_mode) == 0o666 & ~umask


def test_garbage_safetensors_is_one_line(tmp_path):
    from vld.retrofit.sources import inspect_source

    model = tmp_path / "llama"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(UserError) as err:
        inspect_source(model)
    assert "is not a readable safetensors file" in one_line(err)
    # a real file cut short: the header names data beyond the end
    header = json.dumps({"w": {"dtype": "F32", "shape": [64], "data_offsets": [0, 256]}}).encode()
    (model / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 100)
    with pytest.raises(UserError) as err:
        inspect_source(model)
    assert "lies outside the file" in one_line(err)
    (model / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 256)
    assert inspect_source(model).kind == "hf_llama"


def test_part33_counts_pick_token_tables_by_module_not_shape():
    from vld.eval.knowledge import count_parameters
    from vld.model import ModelConfig, VLDTransformer

    vocab = 64
    for tie in (False, True):
        config = ModelConfig(vocab_size=vocab, d_model=vocab, n_layer=2, n_head=2, max_seq_len=16,
                             block="gpt2", tie_embeddings=tie)
        model = VLDTransformer(config)
        plain = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
        used = np.arange(0, vocab, 4)  # 16 of 64 ids occur
        per_token = vocab * (1 if tie else 2)  # input row (+ head row) of width d_model per token id
        expected = plain - (vocab - len(used)) * per_token
        counts = count_parameters(model, vocab, used)
        assert counts == {"n_params": plain, "n_params_used": expected}


def test_ranges_run_in_their_written_direction():
    from vld.model.schedule import expand_notation

    middle = "0, cycle(1..L-2, k+1), L-1"
    assert expand_notation(middle, 2, 2) == [0, 1]  # no middle layers: not 0,1,0,1,0,1
    assert expand_notation(middle, 4, 1) == [0, 1, 2, 1, 2, 3]
    assert expand_notation("1..L-2", 2, 0) == [] and expand_notation("1..L-2", 3, 0) == [1]
    assert expand_notation("L-1..0", 2, 0) == [1, 0] and expand_notation("L-1..0", 1, 0) == [0]
    assert expand_notation("3..1", 4, 0) == [3, 2, 1] and expand_notation("0..L-1", 1, 0) == [0]


# ----------------------------------------------------------------------------- item 11

def test_requires_python_admits_the_current_distribution_pythons():
    import tomllib

    from packaging.specifiers import SpecifierSet

    spec = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"])
    assert all(v in spec for v in ("3.11.7", "3.12.1", "3.13.0", "3.14.0"))
    assert "3.10.13" not in spec  # numpy 2.4, scipy 1.17 and matplotlib 3.11 need 3.11


def test_lightning_logger_leaves_the_run_end_to_the_stage(store):
    repo, pipeline = store
    with tracking.tracked(pipeline, "train", "v", {}, {}) as run:
        logger = run.lightning_logger()
        logger.log_metrics({"train/loss": 2.5}, step=3)
        logger.finalize("success")  # what Lightning calls when fit ends
        assert _runs(repo)["train@v"][0].info.status == "RUNNING"
        run.finish()
    child = _runs(repo)["train@v"][0]
    assert child.info.status == "FINISHED" and child.data.metrics["train/loss"] == 2.5


def test_tracking_does_not_import_params():
    import sys

    code = "import sys, vld.pipeline.tracking; assert 'vld.pipeline.params' not in sys.modules, sorted(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
