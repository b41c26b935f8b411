"""The VLD transformer: a forward pass that walks a schedule over tied base layers.

The model offers the step interface of vld.model.step (prepare, step, readout); forward and
every other consumer of the schedule drive it through `run_visits`.

Block kinds (vld.model.blocks): GPT-2 style (learned positions, LayerNorm, gelu-tanh MLP,
biases) and Llama style (RoPE, RMSNorm, SwiGLU, no biases), numerically matching Hugging Face
GPT2LMHeadModel and LlamaForCausalLM so an unrolled VLD model exports as an ordinary HF model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vld.errors import fail
from vld.model.adapters import active_adapter, plain_state_dict
from vld.model.attention import causal_attention, causal_mask
from vld.model.backend import Backend
from vld.model.blocks import block_kind
from vld.model.config import PRESETS, ModelConfig
from vld.model.generation import check_request, greedy_decode, left_pad
from vld.model.linear import Linear
from vld.model.modes import eval_mode
from vld.model.schedule import check_order, loop_layout
from vld.model.step import VisitingModel, run_visits


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
    def __init__(self, config: ModelConfig, bias: bool):
        super().__init__()
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


class Block(nn.Module):
    """One base layer: pre-norm attention and MLP with residuals. A block kind's subclass
    sets the norm (built as norm_class(d_model, eps); also the final norm), the MLP (built as
    mlp_class(config)) and whether the attention's projections have biases."""

    norm_class: type[nn.Module]
    mlp_class: type[nn.Module]
    bias: bool

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1 = self.norm_class(config.d_model, config.norm_eps)
        self.attn = Attention(config, self.bias)
        self.norm2 = self.norm_class(config.d_model, config.norm_eps)
        self.mlp = self.mlp_class(config)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.use_dropout = config.dropout > 0  # skip the no-op dropout kernels when p = 0

    def forward(self, x, rope=None, attn_mask=None, is_causal: bool = False, cache: KVCache | None = None, slot: int = 0,
                residual_scale: float | None = None):
        """`residual_scale`: a factor on both residual branches (None: none, the plain block)."""
        attn = self.attn(self.norm1(x), rope, attn_mask, is_causal, cache, slot)
        attn = self.resid_dropout(attn) if self.use_dropout else attn
        x = x + (attn if residual_scale is None else attn * residual_scale)
        mlp = self.mlp(self.norm2(x))
        mlp = self.resid_dropout(mlp) if self.use_dropout else mlp
        return x + (mlp if residual_scale is None else mlp * residual_scale)


class GPT2Block(Block):
    norm_class, mlp_class, bias = nn.LayerNorm, GPT2MLP, True


class LlamaBlock(Block):
    norm_class, mlp_class, bias = RMSNorm, SwiGLU, False


class InputInjection(nn.Module):
    """inject "adapter": state + W [norm(state), norm(embedding)]. W starts at zero, so the model
    computes the plain model's function until training moves it; the norms keep what is added
    independent of the residual stream's growing scale."""

    def __init__(self, config: ModelConfig, norm_class: type[nn.Module]):
        super().__init__()
        self.norm_state = norm_class(config.d_model, config.norm_eps)
        self.norm_input = norm_class(config.d_model, config.norm_eps)
        with torch.device("meta"):  # no random draw: the weights are set below
            self.mix = Linear(2 * config.d_model, config.d_model, bias=False)
        self.mix.weight = nn.Parameter(torch.zeros(config.d_model, 2 * config.d_model))

    def forward(self, state: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return state + self.mix(torch.cat((self.norm_state(state), self.norm_input(embedding)), dim=-1))


@dataclass
class StepInput:
    """What every virtual layer reads besides the state, prepared once per forward call."""

    embedding: torch.Tensor  # h_0: token (+ position) embeddings after dropout
    rope: tuple[torch.Tensor, torch.Tensor] | None  # cos, sin at each position (RoPE kinds)
    attn_mask: torch.Tensor | None  # for SDPA; None with is_causal on the unpadded paths
    is_causal: bool
    cache: KVCache | None


class VLDTransformer(VisitingModel, nn.Module):
    """A decoder whose depth is a schedule over `config.n_layer` tied base layers.

    `config` is what the model is (saved with it); `backend` how it runs here (default:
    oneDNN GEMMs, no activation checkpointing), changeable with `set_backend`, never saved.
    `visit_adapters`: per-visit LoRA adapter names, one per visit (`set_visit_adapters`), or
    None. A subclass may override `step` (say, to add the input embedding at some visits):
    every consumer of the schedule runs it.
    """

    def __init__(self, config: ModelConfig, backend: Backend | None = None):
        super().__init__()
        config = copy.deepcopy(config).validate()
        self.config = config
        kind = block_kind(config.block)
        layer_class = kind.layer_class()
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.max_seq_len, config.d_model) if kind.positions == "learned" else None
        self.emb_dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(layer_class(config) for _ in range(config.n_layer))
        self.norm_f = layer_class.norm_class(config.d_model, config.norm_eps)
        self.lm_head = Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos = sin = None
        if kind.positions == "rope":
            inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, config.head_dim, 2, dtype=torch.int64).float() / config.head_dim))
            angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float32), inv_freq)
            angles = torch.cat((angles, angles), dim=-1)
            cos, sin = angles.cos(), angles.sin()
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.injection = InputInjection(config, layer_class.norm_class) if config.inject == "adapter" else None
        self.schedule: tuple[int, ...] = ()
        self._inject_at: frozenset[int] = frozenset()  # visits that start a repeat of the core after the first
        self._residual_scales: tuple[float, ...] | None = None  # per visit, with residual_scale
        self.visit_adapters: list[str] | None = None
        self.set_schedule(config.schedule)
        self.backend = Backend()
        self.set_backend(Backend() if backend is None else backend)
        self._init_weights()

    # -- structure
    def set_schedule(self, order: Sequence[int] | None) -> None:
        """Visit base layers in `order` (None = identity). Parameters are unchanged."""
        if order is None:
            schedule, saved = tuple(range(self.config.n_layer)), None
        else:
            order = check_order(order, self.config.n_layer, "schedule")
            schedule, saved = tuple(order), list(order)
        if self.visit_adapters is not None and len(schedule) != len(self.visit_adapters):
            fail("schedule", "cannot change the depth of a model with per-visit adapters")
        if self.config.inject is not None:
            prelude, span, repeats = loop_layout(schedule, self.config.n_layer, self.config.loop_core)
            self._inject_at = frozenset(prelude + span * repeat for repeat in range(1, repeats))
        if self.config.residual_scale == "visits":
            self._residual_scales = tuple(1.0 / schedule.count(index) for index in schedule)
        self.schedule, self.config.schedule = schedule, saved

    def set_backend(self, backend: Backend) -> None:
        super().set_backend(backend)
        for module in self.modules():
            if isinstance(module, Linear):
                module.cpu_gemm = backend.cpu_gemm

    @property
    def effective_depth(self) -> int:
        return len(self.schedule)

    def virtual_layers(self) -> list[nn.Module]:
        """The module run at each virtual layer (the same object for tied visits)."""
        return [self.layers[index] for index in self.schedule]

    def _init_weights(self) -> None:
        std = self.config.init_std
        # GPT-2's scaled init of residual projections, by the depth the stream actually sees.
        resid_std = std / math.sqrt(2 * self.effective_depth)
        for name, module in self.named_modules():
            if name.startswith("injection"):
                continue  # zero at init (InputInjection)
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
        """Logits [B, T, V] for tokens [B, T]; with return_hidden also the states h_0..h_D.

        attention_mask [B, past+T] (1 = real token, 0 = padding) covers the cached positions
        too; position_ids [B, T] default to positions after the cached ones (or, with a mask,
        to the count of real tokens before each position, so left padding is transparent).
        """
        inputs = self.prepare(tokens, cache, attention_mask, position_ids)
        hidden = [inputs.embedding] if return_hidden else None
        state = run_visits(self, inputs, inputs.embedding, range(self.effective_depth), hidden)
        if cache is not None:
            cache.length += tokens.shape[1]
        logits = self.readout(state)
        return (logits, hidden) if return_hidden else logits

    def prepare(self, tokens, cache: KVCache | None = None, attention_mask=None, position_ids=None) -> StepInput:
        """Embeddings, positions, attention mask and cache for one call (forward's arguments)."""
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
        if self.rope_cos is not None:
            rope = (self.rope_cos[position_ids].unsqueeze(1).to(x.dtype), self.rope_sin[position_ids].unsqueeze(1).to(x.dtype))
        attn_mask, is_causal = self._attention_mask(attention_mask, batch, seq, past, tokens.device)
        return StepInput(x, rope, attn_mask, is_causal, cache)

    def step(self, state: torch.Tensor, visit: int, inputs: StepInput) -> torch.Tensor:
        """Virtual layer `visit`: its base layer (with the visit's own adapter, if any) on `state`;
        with the loop recipes of the config, the input re-injected first where a repeat of the
        core starts, and the residual branches scaled by 1/visits of the layer."""
        layer = self.layers[self.schedule[visit]]
        if visit in self._inject_at:
            state = state + inputs.embedding if self.injection is None else self.injection(state, inputs.embedding)
        args = (state, inputs.rope, inputs.attn_mask, inputs.is_causal, inputs.cache, visit)
        if self._residual_scales is not None:
            args += (self._residual_scales[visit],)
        if self.visit_adapters is None:
            return layer(*args)
        with active_adapter(layer, self.visit_adapters[visit]):
            return layer(*args)

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        """Logits from a residual state: the final norm and the head (also the logit lens)."""
        return self.lm_head(self.norm_f(state))

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

    def visit_flops(self, visit: int, seq_len: int) -> int:
        """Forward FLOPs per token of virtual layer `visit`: 2 x its base layer's parameters +
        causal attention 2 * d_model * (seq_len + 1)."""
        layer_params = sum(p.numel() for p in self.layers[self.schedule[visit]].parameters())
        return 2 * layer_params + 2 * self.config.d_model * (seq_len + 1)

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> int:
        """Forward FLOPs per token: every visit's `visit_flops` + 2 * d_model * vocab for the
        head; training = 3 x forward (backward is twice the forward)."""
        seq_len = self.config.max_seq_len if seq_len is None else seq_len
        visits = sum(self.visit_flops(visit, seq_len) for visit in range(self.effective_depth))
        forward = visits + 2 * self.config.d_model * self.config.vocab_size
        return 3 * forward if training else forward

    # -- export
    @torch.no_grad()
    def unrolled(self) -> "VLDTransformer":
        """An untied model computing the same function: one copy of the weights per virtual
        layer (visit v runs layer v), of `self`'s class (a subclass's step comes along), in its
        backend, dtype, device and training mode, every parameter trainable.

        LoRA adapters (peft's wrappers) are merged: a shared adapter into every visit of its
        layer; per-visit adapters (`visit_adapters`) each into its own visit. `self` is left
        untouched.
        """
        if self.config.inject is not None or self.config.residual_scale is not None:
            fail("unrolled", "a model with loop recipes (inject, residual_scale) has no untied equivalent here")
        param = self.tok_emb.weight
        # A copy of everything but the base layers (the memo stands an empty list in for them).
        model = copy.deepcopy(self, {id(self.layers): nn.ModuleList()})
        model.config = dataclasses.replace(model.config, n_layer=self.effective_depth, schedule=None)
        layer_class = block_kind(model.config.block).layer_class()
        with torch.device("meta"):  # shapes only: the weights come next (and no RNG is drawn)
            model.layers = nn.ModuleList(layer_class(model.config) for _ in range(self.effective_depth))
        for visit, index in enumerate(self.schedule):
            adapter = None if self.visit_adapters is None else self.visit_adapters[visit]
            model.layers[visit].load_state_dict(plain_state_dict(self.layers[index], adapter), assign=True)
        model.visit_adapters = None
        model.set_schedule(None)
        model.set_backend(self.backend)
        model.to(device=param.device, dtype=param.dtype).train(self.training)
        model.requires_grad_(True)
        return model


def save_model(model: VLDTransformer, path) -> None:
    """Write {"config", "state_dict"} atomically (base layers once; sharing is structural)."""
    from vld.atomic import save_torch

    save_torch(path, {"config": model.config.to_dict(), "state_dict": model.state_dict()})


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


__all__ = ["PRESETS", "Backend", "Block", "KVCache", "ModelConfig", "StepInput", "VLDTransformer", "load_model", "save_model"]
