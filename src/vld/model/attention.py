"""Causal self-attention over a whole sequence, as the training step needs it.

On CPU the training path runs exact softmax attention in blocks of query rows with batched
GEMMs: query block i only meets keys 0..end of block i, so the key blocks hidden by the causal
mask are never computed, and the block's probabilities are kept for the backward pass (no
recomputation). That is why it beats SDPA's CPU flash kernel at training shapes: the flash
backward recomputes the scores (measured figures: docs/model.md, bench/bench_model.py).
Everywhere else (a GPU, a KV cache, padding masks, dropout, long sequences where the
kept probabilities would cost O(T^2) memory) it is SDPA.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

QUERY_BLOCK = 64  # rows per block: big enough for efficient GEMMs, small enough to skip most masked keys
MAX_BLOCKED_LEN = 1024  # beyond this the kept probabilities (about B*H*T^2/2 floats) cost too much


@functools.lru_cache(maxsize=16)
def _hidden_keys(block: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The diagonal block's mask, added to its scores: -inf above the diagonal, 0 elsewhere.
    Built once per (block, dtype, device) instead of at every call; only ever read."""
    return torch.full((block, block), float("-inf"), dtype=dtype, device=device).triu_(1)


class BlockCausalAttention(torch.autograd.Function):
    """qkv [3, B, H, T, D] (any strides) -> (causal attention output [B, T, H*D] (heads merged),
    then what backward needs: qkv as [3, B*H, T, D] and each query block's probabilities).

    Taking q, k, v as one tensor lets the backward pass hand back one gradient in the layout of
    the fused projection's output, instead of three that autograd would stack and copy again.
    The kept tensors are outputs (not differentiable) because torch.func's vmap needs a forward
    without ctx; `block_causal_attention` returns the attention alone.
    """

    @staticmethod
    def forward(qkv, block: int):
        _, batch, heads, seq, head_dim = qkv.shape
        scale = 1.0 / math.sqrt(head_dim)
        qkv = qkv.reshape(3, batch * heads, seq, head_dim)  # a copy unless already in this layout
        q, k, v = qkv
        out = q.new_empty(batch, seq, heads, head_dim)
        # under torch.compile the mask is built inside the graph (dynamo warns about cached calls)
        hidden = (_hidden_keys.__wrapped__ if torch.compiler.is_compiling() else _hidden_keys)(block, q.dtype, q.device)
        probs = []
        for start in range(0, seq, block):
            end = min(start + block, seq)
            scores = torch.bmm(q[:, start:end], k[:, :end].transpose(1, 2)).mul_(scale)
            scores[:, :, start:end] += hidden[: end - start, : end - start]  # the diagonal block only
            p = torch.softmax(scores, dim=-1)
            probs.append(p)
            out[:, start:end] = torch.bmm(p, v[:, :end]).view(batch, heads, end - start, head_dim).transpose(1, 2)
        return (out.view(batch, seq, heads * head_dim), qkv, *probs)

    @staticmethod
    def setup_context(ctx, inputs, output):
        qkv_in, block = inputs
        _, qkv, *probs = output
        ctx.mark_non_differentiable(qkv, *probs)
        ctx.set_materialize_grads(False)  # no zero gradients for the kept tensors
        ctx.save_for_backward(qkv, *probs)
        ctx.block, ctx.scale, ctx.batch = block, 1.0 / math.sqrt(qkv_in.shape[-1]), qkv_in.shape[1]

    @staticmethod
    def backward(ctx, grad_out, *_):
        if grad_out is None:
            return None, None
        qkv, *probs = ctx.saved_tensors
        _, batch_heads, seq, head_dim = qkv.shape
        batch = ctx.batch
        heads = batch_heads // batch
        q, k, v = qkv
        grad_o = grad_out.reshape(batch, seq, heads, head_dim).transpose(1, 2).reshape(batch_heads, seq, head_dim)
        grads = torch.empty_like(qkv)
        grad_q, grad_k, grad_v = grads
        starts = range(0, seq, ctx.block)
        # Last block first: it reaches every key, so it writes grad_k and grad_v whole (no zero fill)
        # and the earlier blocks add onto their prefixes. bmm into a fresh tensor, then add:
        # baddbmm_ into a strided slice would run one GEMM per head.
        for p, start in reversed(list(zip(probs, starts))):
            end = start + p.shape[1]
            grad_o_block = grad_o[:, start:end]
            grad_p = torch.bmm(grad_o_block, v[:, :end].transpose(1, 2))
            # softmax backward, with the score scale folded in: dS = P * (dP - rowsum(P * dP)) * scale
            grad_s = grad_p.sub_((p * grad_p).sum(-1, keepdim=True)).mul_(p).mul_(ctx.scale)
            grad_q[:, start:end] = torch.bmm(grad_s, k[:, :end])
            if end == seq:
                torch.bmm(p.transpose(1, 2), grad_o_block, out=grad_v)
                torch.bmm(grad_s.transpose(1, 2), q[:, start:end], out=grad_k)
            else:
                grad_v[:, :end] += torch.bmm(p.transpose(1, 2), grad_o_block)
                grad_k[:, :end] += torch.bmm(grad_s.transpose(1, 2), q[:, start:end])
        return grads.view(3, batch, heads, seq, head_dim), None

    @staticmethod
    def vmap(info, in_dims, qkv, block):
        """Under torch.func.vmap (stacked models, vld.train.stacked): the stacked dimension
        joins the batch, one call for all models; each (model, sequence, head) keeps its own GEMMs."""
        qkv = qkv.movedim(in_dims[0], 1)  # [3, N, B, H, T, D]
        models, batch = qkv.shape[1], qkv.shape[2]
        out, kept_qkv, *probs = BlockCausalAttention.apply(qkv.flatten(1, 2), block)
        per_model = (out.unflatten(0, (models, batch)), kept_qkv.unflatten(1, (models, -1)),
                     *(p.unflatten(0, (models, -1)) for p in probs))
        return per_model, (0, 1, *(0 for _ in probs))


def block_causal_attention(qkv: torch.Tensor, block: int = QUERY_BLOCK) -> torch.Tensor:
    """BlockCausalAttention's attention output [B, T, H*D] for qkv [3, B, H, T, D]."""
    return BlockCausalAttention.apply(qkv, block)[0]


def blocked_path(qkv: torch.Tensor, dropout_p: float) -> bool:
    """Whether BlockCausalAttention serves this call (else SDPA)."""
    return (qkv.device.type == "cpu" and dropout_p == 0.0 and qkv.dtype in (torch.float32, torch.float64)
            and qkv.shape[3] <= MAX_BLOCKED_LEN)


def causal_attention(qkv: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal self-attention of q, k, v stacked as qkv [3, B, H, T, D] (no cache) -> [B, T, H*D].

    Under CPU autocast the block-causal kernel runs in float32 (its backward writes into
    tensors of one dtype; the softmax would be float32 under autocast anyway): the linear
    layers around it carry the reduced precision."""
    if qkv.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return causal_attention(qkv.float(), dropout_p)
    if blocked_path(qkv, dropout_p):
        return block_causal_attention(qkv, QUERY_BLOCK)
    q, k, v = qkv
    batch, heads, seq, head_dim = q.shape
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    return y.transpose(1, 2).reshape(batch, seq, heads * head_dim)


def causal_mask(n_new: int, n_past: int, device, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Which keys each new query may see: bool [B or 1, 1, n_new, n_past + n_new], True = attend.

    Causal over positions n_past..n_past+n_new-1 against keys 0..n_past+n_new-1. With
    `attention_mask` [B, n_past + n_new] (1 = real token, 0 = padding) padding keys are hidden,
    except that every query sees itself: a padding query would otherwise see no key at all (a
    NaN row in SDPA). Shared by VLDTransformer and the retrofitted Llama.
    """
    total = n_past + n_new
    query_pos = torch.arange(n_past, total, device=device).unsqueeze(1)
    key_pos = torch.arange(total, device=device).unsqueeze(0)
    allowed = (key_pos <= query_pos)[None, None]
    if attention_mask is not None:
        real_key = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :total]
        allowed = (allowed & real_key) | (key_pos == query_pos)
    return allowed
