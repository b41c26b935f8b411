"""`train.strategy: fsdp` for the lm_retrofit family on two CPU processes (gloo).

Lightning 2.6.6 does not run its FSDPStrategy on CPU (docs/lm_retrofit.md#multi-gpu; the
validation that refuses the setting there: tests/test_lm_retrofit.py). torch's own FSDP does, so
tests/scripts/fsdp_cpu_retrofit.py lifts the three refusals and runs the rest as the stage does:
a tiny random Llama with a cycle and LoRA, activation checkpointing, weight decay and clipping,
sharded over two ranks, saved through the gathered weights. Its saved model must equal, within
float reordering, the same fine-tuning in one process without FSDP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import lm_fixtures as F
from repo_env import repo_env

SCRIPT = Path(__file__).resolve().parent / "scripts" / "fsdp_cpu_retrofit.py"
TOLERANCE = 1e-5  # the two runs sum the same numbers in another order


def _train(ckpt: Path, data: Path, out: Path, strategy: str, devices: int) -> dict:
    env = dict(repo_env(), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, str(SCRIPT), str(ckpt), str(data), str(out), strategy, str(devices)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("METRICS ")]
    assert len(lines) == 1, done.stdout[-3000:]
    return json.loads(lines[0][len("METRICS "):])


@pytest.mark.slow
def test_fsdp_on_two_cpu_ranks_saves_what_one_process_trains(tmp_path):
    from safetensors.torch import load_file

    from vld.data.sft import SftSpec, make_sft

    ckpt = F.write_llama(tmp_path / "ckpt", n_layers=4)
    F.write_chats(tmp_path / "a.jsonl")
    spec = SftSpec.from_dict({"source": str(ckpt), "dir": str(tmp_path), "max_tokens": 96,
                              "files": [{"path": "a.jsonl", "weight": 1.0}]}, "data.sft.chat")
    make_sft(spec, tmp_path / "set", "data.sft.chat")

    one = _train(ckpt, tmp_path / "set", tmp_path / "one", "auto", 1)
    sharded = _train(ckpt, tmp_path / "set", tmp_path / "fsdp", "fsdp", 2)
    assert sharded["steps"] == one["steps"] == 4
    assert sharded["loss_curve"] == pytest.approx(one["loss_curve"], abs=TOLERANCE, rel=0)
    # each rank held part of the adapters: the model was sharded, not replicated
    held = json.loads((tmp_path / "fsdp" / "shards.json").read_text())
    total = json.loads((tmp_path / "one" / "shards.json").read_text())[0]
    assert len(held) == 2 and all(0 < h < total for h in held) and sum(held) >= total
    # the saved checkpoints (adapters merged, gathered from both ranks) agree, and training moved them
    path = "model/hf/model.safetensors"
    a, b, start = load_file(tmp_path / "fsdp" / path), load_file(tmp_path / "one" / path), load_file(ckpt / "model.safetensors")
    assert a.keys() == b.keys() == start.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < TOLERANCE
    assert max(float((b[k] - start[k]).abs().max()) for k in b) > 100 * TOLERANCE
    meta = json.loads((tmp_path / "fsdp" / "model" / "retrofit.json").read_text())
    assert meta["saved_schedule"] == [0, 1, 2, 1, 2, 3]
