"""Block-causal attention (the CPU training path) against SDPA: outputs and gradients; the
attention mask of padded and cached calls against a loop."""

import pytest
import torch
import torch.nn.functional as F

from vld.model.attention import MAX_BLOCKED_LEN, block_causal_attention, blocked_path, causal_attention, causal_mask

HEADS, HEAD_DIM = 3, 8


def projection(seq, batch=2, seed=0):
    """A fused q/k/v projection output [B, T, 3*H*D] and its [3, B, H, T, D] strided view."""
    generator = torch.Generator().manual_seed(seed)
    lin = torch.randn(batch, seq, 3 * HEADS * HEAD_DIM, dtype=torch.float64, generator=generator, requires_grad=True)
    return lin, lambda t: t.view(batch, seq, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)


def sdpa(qkv):
    q, k, v = qkv
    batch, _, seq, _ = q.shape
    return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(batch, seq, HEADS * HEAD_DIM)


@pytest.mark.parametrize("seq", [1, 5, 16, 17, 64, 130])
@pytest.mark.parametrize("block", [16, 64])
def test_blocked_equals_sdpa_outputs_and_gradients(seq, block):
    lin, split = projection(seq)
    grad_out = torch.randn(2, seq, HEADS * HEAD_DIM, dtype=torch.float64)
    ours = block_causal_attention(split(lin), block)
    (ours_grad,) = torch.autograd.grad(ours, lin, grad_out)
    reference = sdpa(split(lin))
    (reference_grad,) = torch.autograd.grad(reference, lin, grad_out)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=0, atol=1e-12)


def test_blocked_passes_gradcheck_across_block_boundaries():
    lin, split = projection(seq=11, batch=1)
    assert torch.autograd.gradcheck(lambda t: block_causal_attention(split(t), 4), (lin,))


def test_blocked_takes_a_contiguous_stack_too():
    """The Llama path rotates q and k, then stacks q, k, v: same result as the strided view."""
    lin, split = projection(seq=40)
    q, k, v = split(lin)
    torch.testing.assert_close(block_causal_attention(torch.stack((q, k, v)), 16), sdpa(split(lin)), rtol=0, atol=1e-12)


def test_dispatch_uses_sdpa_where_blocks_do_not_fit():
    qkv = torch.zeros(3, 1, HEADS, 32, HEAD_DIM)
    assert blocked_path(qkv, 0.0)
    assert not blocked_path(qkv, 0.1)  # attention dropout: SDPA draws the mask
    assert not blocked_path(qkv.bfloat16(), 0.0)
    assert not blocked_path(torch.zeros(3, 1, 1, MAX_BLOCKED_LEN + 1, 4), 0.0)  # O(T^2) kept probabilities
    lin, split = projection(seq=MAX_BLOCKED_LEN + 1, batch=1)
    with torch.no_grad():
        torch.testing.assert_close(causal_attention(split(lin)), sdpa(split(lin)), rtol=0, atol=0)


def test_causal_mask_against_a_loop():
    padding = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])  # row 0 left-padded by 2
    for n_past, n_new in ((0, 6), (2, 4), (5, 1)):
        for mask in (None, padding):
            got = causal_mask(n_new, n_past, "cpu", mask)
            rows = 1 if mask is None else 2
            assert got.dtype == torch.bool and got.shape == (rows, 1, n_new, n_past + n_new)
            for b in range(rows):
                for i in range(n_new):
                    query = n_past + i
                    for key in range(n_past + n_new):
                        real = mask is None or bool(mask[b, key])
                        expected = (key <= query and real) or key == query
                        assert bool(got[b, 0, i, key]) == expected, (n_past, n_new, b, i, key)
