"""LoRA adapters seen from vld.model: a module's weights with its adapters folded in (for
unrolling), and one adapter made the active one for a visit (per-visit adapters).

LoRA wrappers are recognised by what peft's have (`lora_A`, `get_base_layer`,
`get_delta_weight`), so vld.model needs no peft import. Used by `VLDTransformer` and by
vld.retrofit for the retrofitted Llama.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def is_lora_module(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "get_delta_weight")


def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if is_lora_module(m)}


@contextlib.contextmanager
def active_adapter(module: nn.Module, name: str):
    """Inside the block every LoRA wrapper in `module` runs adapter `name` only; the active
    adapters are restored after. Set directly: peft's set_adapter would also flip requires_grad
    of the others."""
    wrappers = [m for m in module.modules() if is_lora_module(m)]
    saved = [m._active_adapter for m in wrappers]
    for wrapper in wrappers:
        wrapper._active_adapter = [name]
    try:
        yield
    finally:
        for wrapper, value in zip(wrappers, saved):
            wrapper._active_adapter = value


def check_visit_adapters(names, depth: int) -> list[str] | None:
    """Per-visit adapter names (one per visit) as a model keeps them; None: no per-visit adapters."""
    if names is None:
        return None
    names = [str(name) for name in names]
    if len(names) != depth:
        raise ValueError(f"{len(names)} per-visit adapters for {depth} virtual layers")
    return names


@torch.no_grad()
def merged_weight(linear: nn.Module, adapter: str | None) -> torch.Tensor:
    """A linear layer's weight, copied, with adapter `adapter` folded in where the layer has it
    (None: every adapter it has)."""
    if is_lora_module(linear):
        weight = linear.get_base_layer().weight.detach().clone()
        names = list(linear.lora_A.keys()) if adapter is None else [adapter]
        for name in names:
            if name in linear.lora_A:
                weight += linear.get_delta_weight(name).to(weight.dtype)
        return weight
    return linear.weight.detach().clone()


@torch.no_grad()
def plain_state_dict(module: nn.Module, adapter: str | None) -> dict[str, torch.Tensor]:
    """`module`'s parameters under their plain (LoRA-free) names, copied, with `adapter` merged
    (None: every adapter)."""
    state: dict[str, torch.Tensor] = {}
    for name, sub in lora_modules(module).items():
        key = f"{name}.weight" if name else "weight"
        state[key] = merged_weight(sub, adapter)
        bias = sub.get_base_layer().bias
        if bias is not None:
            state[key[: -len("weight")] + "bias"] = bias.detach().clone()
    for name, param in module.named_parameters():
        if "lora_" in name or ".base_layer." in f".{name}":
            continue
        state[name] = param.detach().clone()
    return state


__all__ = ["active_adapter", "check_visit_adapters", "is_lora_module", "lora_modules", "merged_weight", "plain_state_dict"]
