"""`hardware.precision: bf16-mixed` on CPU (issue 27): under Lightning's CPU autocast the linear
layers run in bfloat16 (also inside torch.func.vmap, where CPU autocast alone leaves them in
float32), the block-causal attention in float32, and training stays deterministic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import vmap

from golden_loss import GOLDEN_FILE, compare, tiny_model, tiny_train_config
from vld import host_speed
from vld.model.attention import causal_attention
from vld.model.linear import linear
from vld.train.config import TrainConfig
from vld.train.datamodules import TokenWindowDataModule
from vld.train.run import run_training

pytestmark = pytest.mark.usefixtures("one_thread")
BF16 = torch.bfloat16


def bf16_reference(x, w, b):
    """The linear layer as bfloat16 arithmetic, written out: operands rounded, then the GEMM."""
    return F.linear(x.to(BF16), w.to(BF16), b.to(BF16))


@pytest.mark.parametrize("cpu_gemm", ["onednn", "blas"])
def test_linear_under_cpu_autocast_is_the_bfloat16_gemm_also_under_vmap(cpu_gemm):
    generator = torch.Generator().manual_seed(0)
    # big enough for the oneDNN path (vld.model.linear.MIN_MACS) outside autocast
    x = torch.randn(3, 4, 128, 64, generator=generator)
    w = torch.randn(3, 96, 64, generator=generator)
    b = torch.randn(3, 96, generator=generator)
    with torch.autocast("cpu", dtype=BF16):
        single = [linear(x[i], w[i], b[i], cpu_gemm) for i in range(3)]
        stacked = vmap(lambda x, w, b: linear(x, w, b, cpu_gemm))(x, w, b)
    for i in range(3):
        expected = bf16_reference(x[i], w[i], b[i])
        assert single[i].dtype == stacked[i].dtype == BF16
        assert torch.equal(single[i], expected) and torch.equal(stacked[i], expected)
    # outside autocast nothing changes: float32
    assert linear(x[0], w[0], b[0], cpu_gemm).dtype == torch.float32


def test_stacked_bfloat16_linears_get_each_models_own_gradients():
    generator = torch.Generator().manual_seed(2)
    x, w, b = (torch.randn(*shape, generator=generator) for shape in ((3, 4, 128, 64), (3, 96, 64), (3, 96)))
    grad_y = torch.randn(3, 4, 128, 96, generator=generator)

    def gradients(stacked: bool):
        leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        with torch.autocast("cpu", dtype=BF16):
            if stacked:
                y = vmap(linear)(*leaves)
            else:
                y = torch.stack([linear(leaves[0][i], leaves[1][i], leaves[2][i]) for i in range(3)])
        y.backward(grad_y.to(y.dtype))
        return [t.grad for t in leaves]

    single, stacked = gradients(False), gradients(True)
    for a, c in zip(single, stacked):
        assert a.dtype == torch.float32 and torch.equal(a, c)
    # and they are the bfloat16 products: dW of model 0 written out
    rows = grad_y[0].reshape(-1, 96).to(BF16)
    assert torch.equal(single[1][0], rows.t().mm(x[0].reshape(-1, 64).to(BF16)).float())


def test_attention_under_cpu_autocast_is_the_float32_kernel():
    qkv = torch.randn(3, 2, 2, 40, 8, generator=torch.Generator().manual_seed(1))
    expected = causal_attention(qkv)
    with torch.autocast("cpu", dtype=BF16):
        got = causal_attention(qkv.to(BF16))
    assert got.dtype == torch.float32
    assert torch.equal(got, causal_attention(qkv.to(BF16).float()))
    assert (got - expected).abs().max() < 0.05  # only the bfloat16 rounding of q, k, v


def test_cpu_accepts_bf16_mixed_and_refuses_other_reduced_precisions():
    base = {"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 8}
    assert TrainConfig.from_dict({**base, "precision": "bf16-mixed"}).resolved_precision() == "bf16-mixed"
    for precision in ("16-mixed", "bf16-true"):
        with pytest.raises(Exception, match=f"train.precision: '{precision}' on CPU"):
            TrainConfig.from_dict({**base, "precision": precision})


def train_bf16(data, out, precision="bf16-mixed"):
    cfg = tiny_train_config(precision=precision)
    model = tiny_model(seed=0)
    metrics = run_training(model, TokenWindowDataModule(data, cfg.seq_len, cfg.micro_batch_size, seed=cfg.seed), cfg, out)
    return model, metrics


def test_bf16_mixed_training_on_cpu_is_deterministic_learns_and_is_not_float32(tiny_data, tmp_path):
    first, first_metrics = train_bf16(tiny_data, tmp_path / "a")
    again, again_metrics = train_bf16(tiny_data, tmp_path / "b")
    curve = first_metrics["loss_curve"]
    assert curve == again_metrics["loss_curve"]
    assert first_metrics["precision"] == "bf16-mixed"  # recorded with the run
    assert all(torch.equal(p, q) for p, q in zip(first.state_dict().values(), again.state_dict().values()))
    assert all(p.dtype == torch.float32 for p in first.parameters())  # float32 master weights
    assert curve[-1] < curve[0]
    golden = json.loads(GOLDEN_FILE.read_text())
    assert compare(curve, golden), "bf16-mixed trained with the float32 arithmetic"
    # close to float32's curve: the same training, rounded
    assert max(abs(a - b) for a, b in zip(curve, golden["losses"])) < 0.05


def test_bf16_mixed_without_onednn_bfloat16_kernels_is_deterministic_and_close(tiny_data, tmp_path):
    """A CPU without bfloat16 instructions, as far as oneDNN knows: ONEDNN_MAX_CPU_ISA=AVX2 keeps
    oneDNN from every bfloat16 kernel, so torch multiplies bfloat16 with its own fallback (none of
    oneDNN's primitives runs in training: its verbose log shows only the host's float32 reference
    GEMM around the fit). Training still repeats bit for bit and stays the same training, rounded."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ONEDNN_VERBOSE": "1", "OMP_NUM_THREADS": "1"}
    curves = []
    for run in ("a", "b"):
        proc = subprocess.run([sys.executable, str(Path(__file__).parent / "scripts" / "train_script.py"),
                               "--data", str(tiny_data), "--out", str(tmp_path / run),
                               # oneDNN named, not auto's library: the host's reference GEMM
                               # then runs in oneDNN on every CPU (auto is MKL on Intel)
                               "--train", json.dumps({"precision": "bf16-mixed", "threads": 1,
                                                      "cpu_gemm": "onednn"})],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        executed = [line for line in (proc.stdout + proc.stderr).splitlines() if ",exec," in line]
        # the host's reference GEMM (float32, vld.host_speed) runs in oneDNN before and after the
        # fit, a warm-up and REPEATS timed calls each; no other oneDNN primitive ran (uncapped: hundreds)
        reference = "mb{}ic{}oc{}".format(*host_speed.REFERENCE_GEMM)
        assert [line for line in executed if reference not in line] == []
        assert len(executed) == 2 * (1 + host_speed.REPEATS)
        metrics = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("METRICS "))[8:])
        assert metrics["precision"] == "bf16-mixed" and metrics["cpu_gemm"] == "onednn"
        curves.append(metrics["loss_curve"])
    assert curves[0] == curves[1]
    golden = json.loads(GOLDEN_FILE.read_text())["losses"]
    assert curves[0][-1] < curves[0][0]
    assert 0 < max(abs(a - b) for a, b in zip(curves[0], golden)) < 0.05  # rounded, not float32
