"""LoRA on a retrofitted model, with `peft`.

Shared adapters (the paper): one adapter per base layer, so every visit of a layer uses the
same adapter weights. Per-visit adapters (an option): each visit has its own adapter on the
shared base weights, named `visit_<v>`, living in the LoRA wrapper of the layer it visits;
the model keeps the names (`set_visit_adapters`) and its step activates the visit's adapter.

Merging: shared adapters merge into the base weights in place (the model stays tied).
Per-visit adapters cannot merge into one shared weight, so `merge_lora` unrolls the model:
one layer per visit, each with its own adapter merged (`VLDTransformer.unrolled`, or
`unroll_hf_llama` here).
"""

from __future__ import annotations

import copy
import re
import warnings

import torch
from torch import nn

from vld.errors import fail
from vld.model.adapters import is_lora_module, lora_modules, plain_state_dict
from vld.retrofit.methods import DEFAULT_LORA_RANK

# The seven linear projections of a Llama block (paper: LoRA on all of them).
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _target_names(model: nn.Module, layer_indices) -> list[str]:
    """Full module names of the linear layers LoRA wraps, in the given base layers."""
    from vld.retrofit.hf_llama import RetrofitLlama

    names = []
    if isinstance(model, RetrofitLlama):
        for j in layer_indices:
            for proj in LLAMA_PROJECTIONS:
                group = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                names.append(f"hf.model.layers.{j}.{group}.{proj}")
        return names
    # vld's own transformer: every nn.Linear inside the base layers.
    for j in layer_indices:
        for name, module in model.layers[j].named_modules():
            inside_lora = "lora_" in name or name.endswith("base_layer") or ".base_layer." in name
            if is_lora_module(module) or (isinstance(module, nn.Linear) and not inside_lora):
                names.append(f"layers.{j}.{name}")
    if not names:
        fail("retrofit.method", "the model has no linear layers inside its base layers to adapt")
    return names


def _inject(model: nn.Module, names: list[str], rank: int, alpha: float, dropout: float, adapter: str):
    from peft import LoraConfig, inject_adapter_in_model

    pattern = "|".join(re.escape(n) for n in names)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=f"({pattern})", bias="none")
    with warnings.catch_warnings():
        # Several adapters in one model is the point of per-visit LoRA, not a mistake.
        warnings.filterwarnings("ignore", message=".*multiple adapters.*")
        inject_adapter_in_model(config, model, adapter_name=adapter)


def add_lora(
    model: nn.Module,
    rank: int = DEFAULT_LORA_RANK,
    alpha: float | None = None,
    dropout: float = 0.0,
    per_visit: bool = False,
    seed: int = 0,
) -> nn.Module:
    """Wrap the base layers' projections with LoRA (in place) and freeze everything else.

    alpha defaults to 2 * rank (scale 2; the paper does not give it). peft draws the A
    matrices at random: they come from `seed`, whatever the global RNG state.
    """
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        fail("retrofit.lora_rank", f"must be a positive integer, got {rank!r}")
    alpha = float(2 * rank if alpha is None else alpha)
    if lora_modules(model):
        fail("retrofit.method", "the model already has LoRA adapters")
    schedule = list(model.schedule)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _add_adapters(model, schedule, rank, alpha, dropout, per_visit)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model


def _add_adapters(model, schedule, rank, alpha, dropout, per_visit) -> None:
    if per_visit:
        names = []
        for visit, layer in enumerate(schedule):
            _inject(model, _target_names(model, [layer]), rank, alpha, dropout, f"visit_{visit}")
            names.append(f"visit_{visit}")
        model.set_visit_adapters(names)
    else:
        _inject(model, _target_names(model, sorted(set(schedule))), rank, alpha, dropout, "default")


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into plain weights; returns a model without LoRA modules.

    Shared adapters: merged in place (W += B A * scale), the model keeps its tying.
    Per-visit adapters: a new, unrolled model of the same class (one layer per visit).
    """
    from vld.retrofit.hf_llama import RetrofitLlama

    if model.visit_adapters is not None:
        if isinstance(model, RetrofitLlama):
            return RetrofitLlama(unroll_hf_llama(model))
        return model.unrolled()
    for name, module in lora_modules(model).items():
        base = module.get_base_layer()
        for adapter in list(module.lora_A.keys()):
            base.weight += module.get_delta_weight(adapter).to(base.weight.dtype)
        _replace_module(model, name, base)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


@torch.no_grad()
def unroll_hf_llama(model) -> nn.Module:
    """An ordinary `LlamaForCausalLM` with one decoder layer per visit (weights copied,
    adapters merged: the shared one, or each visit's own)."""
    from transformers import LlamaForCausalLM

    source = model.hf
    config = copy.deepcopy(source.config)
    config.num_hidden_layers = model.effective_depth
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[j] for j in model.schedule]
    dtype = source.model.embed_tokens.weight.dtype
    with torch.device("meta"):
        unrolled = LlamaForCausalLM(config)
    state = {}
    for key, tensor in plain_state_dict(source, None).items():
        if not key.startswith("model.layers."):
            state[key] = tensor
    for visit, base_index in enumerate(model.schedule):
        adapter = model.visit_adapters[visit] if model.visit_adapters is not None else None
        layer_state = plain_state_dict(source.model.layers[base_index], adapter)
        for key, tensor in layer_state.items():
            state[f"model.layers.{visit}.{key}"] = tensor
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    unrolled.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        unrolled.tie_weights()
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: rebuild them.
    unrolled.model.rotary_emb = type(source.model.rotary_emb)(config=config).to(dtype=torch.float32)
    missing = [n for n, p in unrolled.named_parameters() if p.is_meta]
    if missing:
        raise RuntimeError(f"unrolling left parameters unset: {missing[:3]}")
    return unrolled.to(dtype=dtype).eval()
