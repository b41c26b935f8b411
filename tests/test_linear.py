"""vld.model.linear: the oneDNN CPU GEMM path equals F.linear in value and gradient, and is
taken exactly where it should be."""

import pytest
import torch
import torch.nn.functional as F

from vld.model import Backend, ModelConfig, VLDTransformer
from vld.model.backend import machine_cpu_gemm
from vld.model.linear import MIN_MACS, Linear, onednn_applies, onednn_linear


def layer_and_input(in_features, out_features, bias, rows=384, cpu_gemm="onednn", seed=0):
    torch.manual_seed(seed)
    layer = Linear(in_features, out_features, bias=bias, cpu_gemm=cpu_gemm)
    x = torch.randn(3, rows // 3, in_features, requires_grad=True)
    return layer, x


def float64_reference(layer, x):
    """Output and gradients of the same layer computed by F.linear in float64."""
    w = layer.weight.detach().double().requires_grad_()
    b = layer.bias.detach().double().requires_grad_() if layer.bias is not None else None
    x64 = x.detach().double().requires_grad_()
    y = F.linear(x64, w, b)
    y.backward(torch.ones_like(y) * torch.linspace(-1, 1, y.shape[-1], dtype=torch.float64))
    return y, x64.grad, w.grad, None if b is None else b.grad


# out > in and out < in take the two forms of the weight gradient
@pytest.mark.parametrize("in_features,out_features,bias", [(64, 192, True), (256, 64, True), (128, 128, False)])
def test_onednn_forward_and_gradients_match_float64(in_features, out_features, bias):
    layer, x = layer_and_input(in_features, out_features, bias)
    y = layer(x)
    assert type(y.grad_fn).__name__ == "OneDNNLinearBackward"  # the oneDNN path really ran
    y.backward(torch.ones_like(y) * torch.linspace(-1, 1, y.shape[-1]))
    y64, gx64, gw64, gb64 = float64_reference(layer, x)
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), gx64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad.double(), gw64, rtol=1e-5, atol=1e-4)
    assert layer.weight.grad.shape == layer.weight.shape
    if bias:
        torch.testing.assert_close(layer.bias.grad.double(), gb64, rtol=1e-5, atol=1e-4)


def test_blas_choice_is_exactly_nn_linear():
    layer, x = layer_and_input(256, 512, True, cpu_gemm="blas")
    y = layer(x)
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias))
    assert type(y.grad_fn).__name__ != "OneDNNLinearBackward"


def test_onednn_is_deterministic():
    layer, x = layer_and_input(256, 768, True, rows=4095)
    first, second = layer(x), layer(x)
    assert torch.equal(first, second)
    assert torch.equal(onednn_linear(x.detach(), layer.weight.detach(), layer.bias.detach()), first.detach())


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_where_onednn_applies():
    w = torch.zeros(256, 128)
    rows = MIN_MACS // (256 * 128) + 1  # just enough multiply-adds to repay oneDNN's per-call cost
    x = torch.zeros(rows, 128)
    assert onednn_applies(x, w)
    assert not onednn_applies(x[1:], w)  # one row fewer: MKL is as fast
    assert not onednn_applies(x.double(), w.double())
    assert not onednn_applies(x.bfloat16(), w.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_applies(x, w)
    with torch.backends.mkldnn.flags(enabled=False):
        assert not onednn_applies(x, w)


def test_model_layers_follow_the_backend():
    config = ModelConfig(vocab_size=512, n_layer=2, d_model=64, n_head=2, max_seq_len=64)

    def check(model, cpu_gemm):
        linears = [m for m in model.modules() if isinstance(m, Linear)]
        assert len(linears) == 2 * 4 + 1 and {m.cpu_gemm for m in linears} == {cpu_gemm}
        logits = model(torch.zeros(4, 64, dtype=torch.long))  # the head: 256 rows x 64 x 512, enough for oneDNN
        assert (type(logits.grad_fn).__name__ == "OneDNNLinearBackward") == (cpu_gemm == "onednn")

    check(VLDTransformer(config), machine_cpu_gemm())  # the default: `auto`, this CPU's library
    for cpu_gemm in ("onednn", "blas"):
        model = VLDTransformer(config, backend=Backend(cpu_gemm=cpu_gemm))
        check(model, cpu_gemm)
        check(model.unrolled(), cpu_gemm)  # an unrolled copy runs as its source does
        other = "blas" if cpu_gemm == "onednn" else "onednn"
        model.set_backend(Backend(cpu_gemm=other))
        check(model, other)


def test_second_derivative_is_refused():
    layer, x = layer_and_input(64, 192, True)
    (grad_x,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad_x.sum().backward()
