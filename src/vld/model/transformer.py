"""The VLD transformer: a forward pass that walks a schedule over tied base layers.

Blocks: GPT-2 style (learned positions, LayerNorm, gelu-tanh MLP, biases) and Llama style
(RoPE, RMSNorm, SwiGLU, no biases), numerically matching Hugging Face GPT2LMHeadModel and
LlamaForCausalLM so an unrolled VLD model exports as an ordinary HF model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from vld.errors import fail
from vld.model.adapters import plain_state_dict
from vld.model.attention import causal_attention, causal_mask
from vld.model.backend import Backend
from vld.model.config import PRESETS, ModelConfig
from vld.model.generation import check_request, greedy_decode, left_pad
from vld.model.linear import Linear
from vld.model.modes import eval_mode
from vld.model.schedule import check_order


class KVCache:
    """Keys and values for every virtual layer: slot = position in the schedule.

    A reused base layer sees a different input at each visit, so each visit needs its own
    slot. Tensors are preallocated to `max_len` positions; `length` is how many are filled.
    """

    def __init__(self, n_slots: int, batch_size: int, n_head: int, max_len: int, head_dim: int, dtype, device):
        shape = (n_slots, batch_size, n_head, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.max_len = max_len

    @property
    def n_slots(self) -> int:
        return self.keys.shape[0]

    def update(self, slot: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values for `slot`; return all keys/values so far."""
        end = self.length + key.shape[2]
        self.keys[slot, :, :, self.length:end] = key
        self.values[slot, :, :, self.length:end] = value
        return self.keys[slot, :, :, :end], self.values[slot, :, :, :end]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        bias = config.block == "gpt2"
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.qkv = Linear(config.d_model, 3 * config.d_model, bias=bias)  # fused q, k, v
        self.proj = Linear(config.d_model, config.d_model, bias=bias)
        self.dropout = config.dropout

    def forward(self, x, rope, attn_mask, is_causal: bool, cache: KVCache | None, slot: int):
        batch, seq, width = x.shape
        qkv = self.qkv(x).view(batch, seq, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv
        if rope is not None:
            cos, sin = rope
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
        dropout_p = self.dropout if self.training else 0.0
        if cache is None and attn_mask is None and is_causal:  # a whole sequence: the training shape
            return self.proj(causal_attention(qkv if rope is None else torch.stack((q, k, v)), dropout_p))
        if cache is not None:
            k, v = cache.update(slot, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, width))


class GPT2MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fc = Linear(config.d_model, config.ff_dim)
        self.proj = Linear(config.ff_dim, config.d_model)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ff_dim = config.ff_dim
        self.gate_up = Linear(config.d_model, 2 * config.ff_dim, bias=False)  # fused gate, up
        self.proj = Linear(config.ff_dim, config.d_model, bias=False)

    def forward(self, x):
        gate, up = self.gate_up(x).split(self.ff_dim, dim=-1)
        return self.proj(F.silu(gate) * up)


class RMSNorm(nn.Module):
    """Llama RMSNorm: computed in float32, weight applied after casting back."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.eps = eps

    def forward(self, x):
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def _norm(config: ModelConfig) -> nn.Module:
    if config.block == "llama":
        return RMSNorm(config.d_model, config.norm_eps)
    return nn.LayerNorm(config.d_model, eps=config.norm_eps)


class Block(nn.Module):
    """One base layer: pre-norm attention and MLP with residuals (the same for both styles)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1 = _norm(config)
        self.attn = Attention(config)
        self.norm2 = _norm(config)
        self.mlp = SwiGLU(config) if config.block == "llama" else GPT2MLP(config)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.use_dropout = config.dropout > 0  # skip the no-op dropout kernels when p = 0

    def forward(self, x, rope=None, attn_mask=None, is_causal: bool = False, cache: KVCache | None = None, slot: int = 0):
        attn = self.attn(self.norm1(x), rope, attn_mask, is_causal, cache, slot)
        x = x + (self.resid_dropout(attn) if self.use_dropout else attn)
        mlp = self.mlp(self.norm2(x))
        return x + (self.resid_dropout(mlp) if self.use_dropout else mlp)


class VLDTransformer(nn.Module):
    """A decoder whose depth is a schedule over `config.n_layer` tied base layers.

    `config` is what the model is (saved with it); `backend` how it runs here (default:
    oneDNN GEMMs, no activation checkpointing), changeable with `set_backend`, never saved.
    """

    def __init__(self, config: ModelConfig, backend: Backend | None = None):
        super().__init__()
        config = copy.deepcopy(config).validate()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model) if config.block == "gpt2" else None
        self.emb_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = _norm(config)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if config.block == "llama":
            inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.int64).float() / config.head_dim))
            angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float32), inv_freq)
            angles = torch.cat((angles, angles), dim=-1)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.schedule: tuple[int, ...] = ()
        self.set_schedule(config.schedule)
        self.backend = Backend()
        self.set_backend(Backend() if backend is None else backend)
        self._init_weights()

    # -- structure
    def set_schedule(self, order: Sequence[int] | None) -> None:
        """Visit base layers in `order` (None = identity). Parameters are unchanged."""
        if order is None:
            self.schedule = tuple(range(self.config.n_layer))
            self.config.schedule = None
        else:
            order = check_order(order, self.config.n_layer, "schedule")
            self.schedule = tuple(order)
            self.config.schedule = list(order)

    def set_backend(self, backend: Backend) -> None:
        """Run with `backend` from now on (parameters and results, up to summation order, unchanged)."""
        if not isinstance(backend, Backend):
            raise TypeError(f"set_backend: expected a vld.model.Backend, got {type(backend).__name__}")
        self.backend = backend.validate()
        for module in self.modules():
            if isinstance(module, Linear):
                module.cpu_gemm = backend.cpu_gemm

    @property
    def effective_depth(self) -> int:
        return len(self.schedule)

    def virtual_layers(self) -> list[Block]:
        """The module run at each virtual layer (the same object for tied visits)."""
        return [self.layers[index] for index in self.schedule]

    def _init_weights(self) -> None:
        std = self.config.init_std
        # GPT-2's scaled init of residual projections, by the depth the stream actually sees.
        resid_std = std / math.sqrt(2 * self.effective_depth)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=resid_std if name.endswith(".proj") else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)

    # -- forward
    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache with one slot per virtual layer, for up to `max_len` positions."""
        param = self.tok_emb.weight
        return KVCache(self.effective_depth, batch_size, self.config.n_head, max_len, self.config.head_dim, param.dtype, param.device)

    def forward(self, tokens, cache: KVCache | None = None, attention_mask=None, position_ids=None, return_hidden: bool = False):
        """Logits [B, T, V] for tokens [B, T].

        attention_mask [B, past+T] (1 = real token, 0 = padding) covers the cached positions
        too; position_ids [B, T] default to positions after the cached ones (or, with a mask,
        to the count of real tokens before each position, so left padding is transparent).
        """
        batch, seq = tokens.shape
        past = cache.length if cache is not None else 0
        if cache is not None and past + seq > cache.max_len:
            raise ValueError(f"KV cache holds {cache.max_len} positions; {past + seq} needed")
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + seq, device=tokens.device).unsqueeze(0)
        x = self.tok_emb(tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb(position_ids)
        if self.config.dropout > 0:
            x = self.emb_dropout(x)
        rope = None
        if self.config.block == "llama":
            rope = (self.rope_cos[position_ids].unsqueeze(1).to(x.dtype), self.rope_sin[position_ids].unsqueeze(1).to(x.dtype))
        attn_mask, is_causal = self._attention_mask(attention_mask, batch, seq, past, tokens.device)
        use_checkpoint = self.backend.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        hidden = [x] if return_hidden else None
        layers = self.layers
        for slot, index in enumerate(self.schedule):
            layer = layers[index]
            if use_checkpoint:
                # Non-reentrant: a layer run several times per step is fine under DDP.
                x = checkpoint(layer, x, rope, attn_mask, is_causal, None, slot, use_reentrant=False)
            else:
                x = layer(x, rope, attn_mask, is_causal, cache, slot)
            if hidden is not None:
                hidden.append(x)
        if cache is not None:
            cache.length = past + seq
        logits = self.lm_head(self.norm_f(x))
        return (logits, hidden) if return_hidden else logits

    @staticmethod
    def _attention_mask(attention_mask, batch: int, seq: int, past: int, device):
        """(mask for SDPA, is_causal). No mask at all on the common unpadded paths."""
        if attention_mask is None:
            if past == 0:
                return None, seq > 1
            if seq == 1:
                return None, False
        return causal_mask(seq, past, device, attention_mask).expand(batch, 1, seq, past + seq), False

    # -- generation
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], max_new_tokens: int, eos_id: int | None = None, use_cache: bool = True) -> list[list[int]]:
        """Batched greedy decoding. Returns each prompt's continuation (stops after eos, eos kept)."""
        check_request(prompts, max_new_tokens)
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > self.config.max_seq_len:
            fail("generate.max_new_tokens", f"prompt of {longest} tokens + {max_new_tokens} new exceeds max_seq_len {self.config.max_seq_len}")
        with eval_mode(self):
            return self._generate(prompts, max_new_tokens, eos_id, use_cache)

    def _generate(self, prompts, max_new_tokens, eos_id, use_cache):
        tokens, mask = left_pad(prompts, self.tok_emb.weight.device)
        padded = len({len(p) for p in prompts}) > 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = self.new_cache(len(prompts), tokens.shape[1] + max_new_tokens) if use_cache else None

        def next_logits(chosen):
            nonlocal tokens, positions, mask
            feed, feed_positions = tokens, positions
            if chosen is not None:
                new, new_positions = chosen.unsqueeze(1), positions[:, -1:] + 1
                mask = torch.cat((mask, torch.ones_like(new)), dim=1)
                if use_cache:  # only the new token is fed; the cache holds the rest
                    positions, feed, feed_positions = new_positions, new, new_positions
                else:  # the whole sequence again
                    tokens = torch.cat((tokens, new), dim=1)
                    positions = torch.cat((positions, new_positions), dim=1)
                    feed, feed_positions = tokens, positions
            logits = self(feed, cache=cache, attention_mask=mask if padded else None, position_ids=feed_positions)
            return logits[:, -1]

        return greedy_decode(next_logits, len(prompts), max_new_tokens, eos_id)

    # -- accounting
    def parameter_count(self, embeddings: bool = True) -> int:
        """Distinct parameters (tied ones once). Without embeddings: the token and position
        embeddings and the output head are left out (blocks + final norm remain)."""
        params = {id(p): p for p in self.parameters()}
        if not embeddings:
            for module in (self.tok_emb, self.pos_emb, self.lm_head):
                if module is not None:
                    for p in module.parameters():
                        params.pop(id(p), None)
        return sum(p.numel() for p in params.values())

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> int:
        """Forward FLOPs per token: 2 * (block params x effective depth) + causal attention
        2 * d_model * (seq_len + 1) per virtual layer + 2 * d_model * vocab for the head;
        training = 3 x forward (backward is twice the forward)."""
        seq_len = self.config.max_seq_len if seq_len is None else seq_len
        block_params = sum(p.numel() for p in self.layers[0].parameters())
        depth = self.effective_depth
        d_model = self.config.d_model
        forward = 2 * block_params * depth + 2 * d_model * (seq_len + 1) * depth + 2 * d_model * self.config.vocab_size
        return 3 * forward if training else forward

    # -- export
    @torch.no_grad()
    def unrolled(self) -> "VLDTransformer":
        """An ordinary untied model computing the same function: one copy of the weights per
        virtual layer, in `self`'s backend, dtype, device and training mode.

        LoRA adapters (peft's wrappers) are merged: a shared adapter into every visit of its
        layer; per-visit adapters (`self.visit_adapters`, one name per visit, see
        vld.retrofit.lora) each into its own visit. `self` is left untouched.
        """
        config = dataclasses.replace(copy.deepcopy(self.config), n_layer=self.effective_depth, schedule=None)
        param = self.tok_emb.weight
        model = VLDTransformer(config, backend=self.backend).to(device=param.device, dtype=param.dtype)
        visit_adapters = getattr(self, "visit_adapters", None)
        state = {name: value for name, value in plain_state_dict(self, None).items() if not name.startswith("layers.")}
        for slot, index in enumerate(self.schedule):
            adapter = None if visit_adapters is None else visit_adapters[slot]
            for name, value in plain_state_dict(self.layers[index], adapter).items():
                state[f"layers.{slot}.{name}"] = value
        if config.tie_embeddings:
            state["lm_head.weight"] = state["tok_emb.weight"]
        model.load_state_dict(state)
        model.train(self.training)
        return model


def save_model(model: VLDTransformer, path) -> None:
    """Write {"config", "state_dict"} atomically (base layers once; sharing is structural)."""
    from vld.atomic import save_torch

    save_torch(path, {"config": dataclasses.asdict(model.config), "state_dict": model.state_dict()})


def load_model(path, map_location="cpu", backend: Backend | None = None) -> VLDTransformer:
    """Rebuild a model saved by save_model, to run with `backend`; tied weights share storage
    again. Run settings saved by older versions inside the config are dropped."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        fail(str(path), "model file not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file
        fail(str(path), f"not a readable vld model file ({type(err).__name__})")
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict) or "state_dict" not in payload:
        fail(str(path), "not a vld model file (expected keys config, state_dict)")
    config = ModelConfig.from_dict(ModelConfig.without_run_settings(payload["config"]), where=f"{path}:config")
    model = VLDTransformer(config, backend=backend)
    model.load_state_dict(payload["state_dict"])
    return model.to(next(iter(payload["state_dict"].values())).dtype)


__all__ = ["PRESETS", "Backend", "KVCache", "ModelConfig", "VLDTransformer", "load_model", "save_model"]
