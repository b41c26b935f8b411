"""A Hugging Face Llama run with a layer-reuse schedule.

`RetrofitLlama` keeps the original `LlamaForCausalLM` (embeddings, decoder layers, final
norm, head) and runs its decoder layers in schedule order: a layer visited twice is the same
module, so weights are tied and the parameter count is unchanged.

The KV cache. A `LlamaAttention` writes its keys and values to `cache.update(..., layer_idx)`
with its own fixed `layer_idx`. Reusing the module with HF's cache makes every visit of a
layer append to the same slot: the second visit then attends to the first visit's keys
(HF's sdpa path even slices the keys back to the first visit's at prefill), so cached
generation silently differs from uncached. Here each visit gets its own slot: the layer is
handed a `_VisitSlot`, a view of one slot of a `VisitKVCache` that ignores `layer_idx`.

The model offers the step interface of vld.model.step (prepare, step, readout), which its
forward drives through `run_visits` as VLDTransformer's does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from vld.errors import fail
from vld.model.adapters import active_adapter
from vld.model.attention import causal_mask
from vld.model.backend import Backend
from vld.model.generation import check_request, greedy_decode, left_pad
from vld.model.modes import eval_mode
from vld.model.step import VisitingModel, run_visits


class VisitKVCache:
    """Keys and values of past tokens, one slot per virtual layer (position in the schedule)."""

    def __init__(self, n_slots: int):
        self.keys: list[torch.Tensor | None] = [None] * n_slots
        self.values: list[torch.Tensor | None] = [None] * n_slots

    def __len__(self) -> int:
        return len(self.keys)

    def get_seq_length(self) -> int:
        return 0 if self.keys[0] is None else int(self.keys[0].shape[-2])

    def slot(self, index: int) -> "_VisitSlot":
        return _VisitSlot(self, index)


class _VisitSlot:
    """What one visit's attention sees as its `cache`: append to this visit's slot only."""

    def __init__(self, store: VisitKVCache, index: int):
        self.store, self.index = store, index

    def update(self, key_states, value_states, layer_idx=None, *args, **kwargs):
        del layer_idx, args, kwargs  # the module's own index is the shared layer's, not the visit's
        i = self.index
        if self.store.keys[i] is None:
            self.store.keys[i], self.store.values[i] = key_states, value_states
        else:
            self.store.keys[i] = torch.cat([self.store.keys[i], key_states], dim=-2)
            self.store.values[i] = torch.cat([self.store.values[i], value_states], dim=-2)
        return self.store.keys[i], self.store.values[i]


@dataclass
class LlamaStepInput:
    """What every decoder layer reads besides the state, prepared once per forward call."""

    embedding: torch.Tensor  # h_0
    attn_mask: torch.Tensor | None  # the mask HF's attention expects; None: its causal path
    position_ids: torch.Tensor
    position_embeddings: tuple[torch.Tensor, torch.Tensor]  # RoPE cos, sin
    cache: VisitKVCache | None


class RetrofitLlama(VisitingModel, nn.Module):
    """`LlamaForCausalLM` with its decoder layers visited in `schedule` order.

    forward(tokens[B,T], attention_mask[B,P+T] | None, cache | None, position_ids | None)
    -> logits [B,T,V]. `attention_mask` (1 = real token, 0 = padding) covers past and current
    tokens, as in HF. `generate` is batched greedy decoding with left padding. `backend` (set
    with `set_backend`): its activation_checkpointing applies; its cpu_gemm does not (the
    layers are transformers' own `nn.Linear`s).
    """

    def __init__(self, hf_model: nn.Module, schedule: Sequence[int] | None = None):
        super().__init__()
        self.hf = hf_model
        self.n_base_layers = len(hf_model.model.layers)
        self.backend = Backend()
        # Per-visit LoRA: adapter name of each visit (None: one adapter per layer, or none).
        self.visit_adapters: list[str] | None = None  # set with set_visit_adapters
        self.set_schedule(list(range(self.n_base_layers)) if schedule is None else schedule)

    # ----------------------------------------------------------------- schedule
    def set_schedule(self, order: Sequence[int]) -> None:
        order = [int(i) for i in order]
        if not order:
            fail("schedule", "empty schedule")
        for index in order:
            if index < 0 or index >= self.n_base_layers:
                fail("schedule", f"layer {index} out of range for {self.n_base_layers} base layers")
        if self.visit_adapters is not None and len(order) != len(self.visit_adapters):
            fail("schedule", "cannot change the depth of a model with per-visit adapters")
        self.schedule = tuple(order)

    @property
    def effective_depth(self) -> int:
        return len(self.schedule)

    def fsdp_blocks(self) -> set[type]:
        """The classes of the decoder layers: FSDP's units (vld.train.run.fsdp_kwargs)."""
        return {type(layer) for layer in self.hf.model.layers}

    @property
    def config(self):
        return self.hf.config

    def parameter_count(self, embeddings: bool = True) -> int:
        params = {id(p): p for p in self.parameters()}
        total = sum(p.numel() for p in params.values())
        if not embeddings:
            total -= self.hf.model.embed_tokens.weight.numel()
        return total

    def new_cache(self) -> VisitKVCache:
        return VisitKVCache(self.effective_depth)

    # ----------------------------------------------------------------- forward
    def _attention_mask(self, attention_mask, batch, n_new, n_past, dtype, device):
        """The 4-D mask the attention function expects, or None for plain causal attention."""
        implementation = getattr(self.hf.config, "_attn_implementation", "sdpa") or "sdpa"
        if attention_mask is None and n_past == 0 and implementation == "sdpa":
            return None  # sdpa's own is_causal path, exactly as HF runs an unpadded prompt
        allowed = causal_mask(n_new, n_past, device, attention_mask).expand(batch, 1, n_new, n_past + n_new)
        if implementation == "sdpa":
            return allowed
        if implementation != "eager":
            fail("model.attn_implementation", f"{implementation!r} is not supported (use sdpa or eager)")
        additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return additive.masked_fill(~allowed, torch.finfo(dtype).min)

    def forward(self, tokens, attention_mask=None, cache: VisitKVCache | None = None, position_ids=None):
        inputs = self.prepare(tokens, attention_mask, cache, position_ids)
        return self.readout(run_visits(self, inputs, inputs.embedding, range(self.effective_depth)))

    def prepare(self, tokens, attention_mask=None, cache: VisitKVCache | None = None, position_ids=None) -> LlamaStepInput:
        """Embeddings, positions, attention mask and cache for one call (forward's arguments)."""
        batch, n_new = tokens.shape
        n_past = 0 if cache is None else cache.get_seq_length()
        if cache is not None and len(cache) != self.effective_depth:
            raise ValueError(f"cache has {len(cache)} slots for {self.effective_depth} virtual layers")
        if attention_mask is not None and attention_mask.shape != (batch, n_past + n_new):
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != {(batch, n_past + n_new)}")
        hidden = self.hf.model.embed_tokens(tokens)
        if position_ids is None:
            if attention_mask is None:
                position_ids = torch.arange(n_past, n_past + n_new, device=tokens.device)[None].expand(batch, -1)
            else:
                # Left padding: positions count real tokens only, as HF's generate does.
                counted = attention_mask.long().cumsum(-1) - 1
                position_ids = counted.clamp(min=0)[:, n_past:]
        mask = self._attention_mask(attention_mask, batch, n_new, n_past, hidden.dtype, hidden.device)
        position_embeddings = self.hf.model.rotary_emb(hidden, position_ids=position_ids)
        return LlamaStepInput(hidden, mask, position_ids, position_embeddings, cache)

    def step(self, state: torch.Tensor, visit: int, inputs: LlamaStepInput) -> torch.Tensor:
        """Virtual layer `visit`: its decoder layer (with the visit's own adapter, if any)."""
        layer = self.hf.model.layers[self.schedule[visit]]
        if self.visit_adapters is None:
            return self._run_layer(layer, state, visit, inputs)
        with active_adapter(layer, self.visit_adapters[visit]):
            return self._run_layer(layer, state, visit, inputs)

    @staticmethod
    def _run_layer(layer, state, visit, inputs):
        return layer(
            state,
            attention_mask=inputs.attn_mask,
            position_ids=inputs.position_ids,
            cache=None if inputs.cache is None else inputs.cache.slot(visit),
            use_cache=inputs.cache is not None,
            position_embeddings=inputs.position_embeddings,
        )

    def readout(self, state: torch.Tensor) -> torch.Tensor:
        """Logits from a residual state: the final norm and the head."""
        return self.hf.lm_head(self.hf.model.norm(state))

    # ----------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        eos_id: int | None = None,
        use_cache: bool = True,
        cache: VisitKVCache | None = None,
    ) -> list[list[int]]:
        """Batched greedy decoding; returns each continuation (stopping after eos, eos included)."""
        return greedy_generate(self, prompts, max_new_tokens, eos_id, use_cache, cache)


def greedy_generate(model, prompts, max_new_tokens, eos_id=None, use_cache=True, cache=None):
    """Left-padded batched greedy decoding for a module with forward(tokens, attention_mask, cache)."""
    check_request(prompts, max_new_tokens)
    tokens, mask = left_pad(prompts, next(model.parameters()).device)
    if use_cache and cache is None:
        cache = model.new_cache()

    def next_logits(chosen):
        nonlocal tokens, mask
        if chosen is not None:
            mask = torch.cat([mask, torch.ones_like(chosen)[:, None]], dim=1)
            if use_cache:
                return model(chosen[:, None], attention_mask=mask, cache=cache)[:, -1]
            tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        return model(tokens, attention_mask=mask, cache=cache if use_cache else None)[:, -1]

    with eval_mode(model):
        return greedy_decode(next_logits, len(prompts), max_new_tokens, eos_id)
