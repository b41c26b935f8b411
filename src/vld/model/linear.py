"""Linear layers whose fp32 CPU GEMMs can run in oneDNN instead of the BLAS.

PyTorch's x86 wheels send fp32 matmuls to MKL. On the AMD EPYCs (AVX-512) this project is
developed on, MKL takes a generic code path (MKL_VERBOSE: "Intel(R) Architecture
processors"; MKL_ENABLE_INSTRUCTIONS=AVX512 changes nothing), while oneDNN, shipped inside the
same wheel, picks its kernels by instruction set (ONEDNN_VERBOSE: "isa:Intel AVX-512 ..."), so
at the width-256 model's shapes its GEMMs are the faster ones there (how much faster depends
on the host: docs/model.md and docs/performance.md; `bench/bench_model.py --sections gemm`
prints the rates per shape on the machine it runs on).

Both are IEEE fp32 (no reduced-precision mode): results differ from `F.linear` by summation
order only, a relative 1e-6. `vld.model.Backend.cpu_gemm` chooses: "onednn" or "blas" (exactly
`nn.Linear`); by default the library vld.model.backend lists for the kind of CPU. GPUs, other
dtypes, autocast, torch.compile and calls too small to repay oneDNN's per-call cost take
`F.linear` (under CPU autocast, on operands cast to its dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

# oneDNN has a fixed cost per call that MKL does not: below about 1.5M multiply-adds
# (rows x in x out) MKL is as fast or faster (the measurement: docs/model.md, CPU GEMMs).
MIN_MACS = 1_500_000
AVAILABLE = torch.backends.mkldnn.is_available()  # fixed for the build; `enabled` can change at run time


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in] @ weight[out, in].T + bias, in oneDNN; either operand may be a transposed view."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_input_grad(grad_rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """dX = dY W for dY [rows, out], W [out, in]."""
    return onednn_linear(grad_rows, weight.t())


def onednn_weight_grad(grad_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """dW = dY^T X [out, in] for dY [rows, out], X [rows, in]: a reduction over all rows.

    oneDNN is fastest with the wider side of the result as its output dimension, so when
    out is the wider one this computes dW^T and hands back its transpose.
    """
    if grad_rows.shape[1] >= rows.shape[1]:
        return onednn_linear(rows.t(), grad_rows.t()).t()
    return onednn_linear(grad_rows.t(), rows.t())


def save_linear_inputs(ctx, inputs) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def linear_backward(ctx, grad_y, input_grad, weight_grad):
    """The gradients of y = x W^T + b: input_grad(dY, W) = dX and weight_grad(dY, X) = dW on
    rows (dY [rows, out], X [rows, in]); the bias gradient is dY's column sums."""
    x, weight = ctx.saved_tensors
    grad_x = grad_w = grad_b = None
    grad_rows = grad_y.reshape(-1, weight.shape[0])
    if ctx.needs_input_grad[0]:
        grad_x = input_grad(grad_rows, weight).view(x.shape)
    if ctx.needs_input_grad[1]:
        grad_w = weight_grad(grad_rows, x.reshape(-1, weight.shape[1]))
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_b = grad_rows.sum(0)
    return grad_x, grad_w, grad_b


class OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b with all three GEMMs of its training step in oneDNN."""

    @staticmethod
    def forward(x, weight, bias):
        return onednn_linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        save_linear_inputs(ctx, inputs)

    @staticmethod
    @once_differentiable  # second derivatives (never needed in training) raise instead of going wrong
    def backward(ctx, grad_y):
        return linear_backward(ctx, grad_y, onednn_input_grad, onednn_weight_grad)

    @staticmethod
    def vmap(info, in_dims, x, weight, bias):
        """Under torch.func.vmap (stacked models, vld.train.stacked): one oneDNN call per model,
        so each model's GEMMs are exactly those of its own run."""
        return _per_model(OneDNNLinear, info, in_dims, x, weight, bias)


class CastLinear(torch.autograd.Function):
    """y = x W^T + b on operands already cast to the CPU autocast dtype (bfloat16).

    Its own Function for torch.func.vmap: inside vmap (seeds trained together) CPU autocast
    leaves a batched linear in float32, and a batched bfloat16 GEMM adds its bias after rounding;
    with one call per model here, each seed computes exactly the GEMMs of its single run, as
    OneDNNLinear does in float32."""

    @staticmethod
    def forward(x, weight, bias):
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        save_linear_inputs(ctx, inputs)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        return linear_backward(ctx, grad_y, torch.mm, lambda grad_rows, rows: grad_rows.t().mm(rows))

    @staticmethod
    def vmap(info, in_dims, x, weight, bias):
        return _per_model(CastLinear, info, in_dims, x, weight, bias)


def _per_model(function, info, in_dims, x, weight, bias):
    """A linear Function's vmap rule: one call per model, stacked."""
    def unbind(t, dim):
        return [t] * info.batch_size if t is None or dim is None else t.unbind(dim)

    outputs = [function.apply(*args) for args in zip(unbind(x, in_dims[0]), unbind(weight, in_dims[1]),
                                                     unbind(bias, in_dims[2]))]
    return torch.stack(outputs), 0


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether this call can take oneDNN: fp32 on the CPU, no autocast, enough work to pay off,
    not under torch.compile (inductor lowers this op only for frozen, constant weights)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.numel() * weight.shape[0] >= MIN_MACS
        and AVAILABLE
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, cpu_gemm: str = "onednn") -> torch.Tensor:
    """F.linear, its GEMMs in oneDNN where `cpu_gemm` asks for it and `onednn_applies`.

    Under CPU autocast (`hardware.precision: bf16-mixed` on CPU) the operands are cast to the
    autocast dtype here and CastLinear multiplies them (see there why not F.linear)."""
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return CastLinear.apply(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    if cpu_gemm == "onednn" and onednn_applies(x, weight):
        return OneDNNLinear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters, init and state dict) with a choice of CPU GEMM library."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, cpu_gemm: str = "onednn"):
        super().__init__(in_features, out_features, bias=bias)
        self.cpu_gemm = cpu_gemm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.cpu_gemm)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cpu_gemm={self.cpu_gemm}"
