"""LoRA on a retrofitted model, with `peft`.

Shared adapters (the paper): one adapter per base layer, so every visit of a layer uses the
same adapter weights. Per-visit adapters (an option): each visit has its own adapter on the
shared base weights, named `visit_<v>`, living in the LoRA wrapper of the layer it visits;
`RetrofitLlama` activates the visit's adapter around each visit, and for vld's own
transformer a forward pre-hook on each base layer does it from the visit's cache slot.

Merging: shared adapters merge into the base weights in place (the model stays tied).
Per-visit adapters cannot merge into one shared weight, so `merge_lora` unrolls the model:
one layer per visit, each with its own adapter merged (see `unroll_hf_llama`).
"""

from __future__ import annotations

import copy
import inspect
import re
import warnings

import torch
from torch import nn

from vld.errors import fail

# The seven linear projections of a Llama block (paper: LoRA on all of them).
LLAMA_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
DEFAULT_RANK = 4


def _is_lora_module(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if _is_lora_module(m)}


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
            if _is_lora_module(module) or (isinstance(module, nn.Linear) and not inside_lora):
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


def _install_visit_hooks(model: nn.Module, adapter_of_visit: list[str]) -> None:
    """vld's own transformer calls each base layer with the visit's cache `slot`: a pre-hook
    makes that visit's adapter active in the layer (also when checkpointing recomputes it)."""
    for block in model.layers:
        signature = inspect.signature(block.forward)
        if "slot" not in signature.parameters:
            fail("retrofit.method", "lora_per_visit needs base layers called with their visit slot")

        def activate(module, args, kwargs, signature=signature):
            slot = signature.bind(*args, **kwargs).arguments.get("slot", 0)
            for sub in module.modules():
                if _is_lora_module(sub):
                    sub._active_adapter = [adapter_of_visit[slot]]  # see hf_llama._ACTIVE_ADAPTER_ATTR

        block.register_forward_pre_hook(activate, with_kwargs=True)


def add_lora(
    model: nn.Module,
    rank: int = DEFAULT_RANK,
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
    from vld.retrofit.hf_llama import RetrofitLlama

    if per_visit:
        names = []
        for visit, layer in enumerate(schedule):
            _inject(model, _target_names(model, [layer]), rank, alpha, dropout, f"visit_{visit}")
            names.append(f"visit_{visit}")
        model.visit_adapters = names
        if not isinstance(model, RetrofitLlama):
            _install_visit_hooks(model, names)
    else:
        _inject(model, _target_names(model, sorted(set(schedule))), rank, alpha, dropout, "default")


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters() if p.requires_grad}.values())


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

    if getattr(model, "visit_adapters", None) is not None:
        if isinstance(model, RetrofitLlama):
            return RetrofitLlama(unroll_hf_llama(model))
        return unroll_vld(model)
    for name, module in lora_modules(model).items():
        base = module.get_base_layer()
        for adapter in list(module.lora_A.keys()):
            base.weight += module.get_delta_weight(adapter).to(base.weight.dtype)
        _replace_module(model, name, base)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


@torch.no_grad()
def _merged_weight(linear: nn.Module, adapter: str | None) -> torch.Tensor:
    """A linear layer's weight with one adapter folded in (or the plain weight)."""
    if _is_lora_module(linear):
        weight = linear.get_base_layer().weight.detach().clone()
        if adapter is not None and adapter in linear.lora_A:
            weight += linear.get_delta_weight(adapter).to(weight.dtype)
        return weight
    return linear.weight.detach().clone()


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
    for key, tensor in _plain_state_dict(source, adapter=None, prefix="").items():
        if not key.startswith("model.layers."):
            state[key] = tensor
    for visit, base_index in enumerate(model.schedule):
        adapter = model.visit_adapters[visit] if model.visit_adapters is not None else "default"
        layer_state = _plain_state_dict(source.model.layers[base_index], adapter=adapter, prefix="")
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


def _plain_state_dict(module: nn.Module, adapter: str | None, prefix: str) -> dict[str, torch.Tensor]:
    """`module`'s parameters under their plain (LoRA-free) names, adapters merged, copied."""
    state: dict[str, torch.Tensor] = {}
    wrappers = lora_modules(module)
    for name, sub in wrappers.items():
        key = f"{prefix}{name}.weight" if name else f"{prefix}weight"
        state[key] = _merged_weight(sub, adapter)
        bias = sub.get_base_layer().bias
        if bias is not None:
            state[key[: -len("weight")] + "bias"] = bias.detach().clone()
    for name, param in module.named_parameters():
        if "lora_" in name or ".base_layer." in f".{name}":
            continue
        state[prefix + name] = param.detach().clone()
    return state


@torch.no_grad()
def unroll_vld(model) -> nn.Module:
    """vld's own transformer unrolled (one layer per visit), LoRA adapters merged per visit."""
    import dataclasses

    from vld.model import VLDTransformer

    config = dataclasses.replace(copy.deepcopy(model.config), n_layer=model.effective_depth, schedule=None)
    param = model.tok_emb.weight
    unrolled = VLDTransformer(config).to(device=param.device, dtype=param.dtype)
    state = {k: v for k, v in _plain_state_dict(model, None, "").items() if not k.startswith("layers.")}
    visit_adapters = getattr(model, "visit_adapters", None)
    for visit, base_index in enumerate(model.schedule):
        adapter = visit_adapters[visit] if visit_adapters is not None else "default"
        for key, tensor in _plain_state_dict(model.layers[base_index], adapter, "").items():
            state[f"layers.{visit}.{key}"] = tensor
    if config.tie_embeddings:
        state["lm_head.weight"] = state["tok_emb.weight"]
    unrolled.load_state_dict(state)
    return unrolled.eval()
