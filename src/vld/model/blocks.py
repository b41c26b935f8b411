"""Block kinds: what a base layer is, looked up by `ModelConfig.block` (no torch import).

A kind names the class that builds one base layer (a `vld.model.transformer.Block` subclass,
whose `norm_class` is also the final norm), how positions enter the model, and the MLP width
`d_ff` defaults to. The model, the config's checks and the export read these facts from the
registry; nothing tests a kind's name. A new kind is registered, not added in places:

    class ReluBlock(Block):
        norm_class, mlp_class, bias = nn.LayerNorm, ReluMLP, True

    register_block(BlockKind("relu", ReluBlock, positions="learned", ff_dim=lambda d: 2 * d))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from vld.errors import fail

POSITIONS = ("learned", "rope")  # a position embedding added to the input; rotary, in attention


@dataclass(frozen=True)
class BlockKind:
    """name: the value of ModelConfig.block. layer: the base layer's class, or "module:Class"
    (imported on first use, so the built-ins cost no torch import). positions: one of
    POSITIONS. ff_dim: d_model -> the MLP width when the config gives none."""

    name: str
    layer: str | type
    positions: str
    ff_dim: Callable[[int], int]

    def layer_class(self) -> type:
        if isinstance(self.layer, str):
            module, _, attr = self.layer.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.layer


BLOCK_KINDS: dict[str, BlockKind] = {}


def register_block(kind: BlockKind) -> BlockKind:
    """Make `kind` available as ModelConfig.block = kind.name."""
    if kind.name in BLOCK_KINDS:
        raise ValueError(f"block kind {kind.name!r} is registered already")
    if kind.positions not in POSITIONS:
        raise ValueError(f"block kind {kind.name!r}: positions must be one of {', '.join(POSITIONS)}")
    BLOCK_KINDS[kind.name] = kind
    return kind


def block_kind(name: str, where: str = "model.block") -> BlockKind:
    """The registered kind `name`; a one-line UserError naming `where` for an unknown one."""
    if not isinstance(name, str) or name not in BLOCK_KINDS:
        fail(where, f"unknown block {name!r} (known: {', '.join(BLOCK_KINDS)})")
    return BLOCK_KINDS[name]


def _llama_ff_dim(d_model: int) -> int:
    return -(-8 * d_model // 3 // 64) * 64  # 8/3 d_model, rounded up to a multiple of 64


register_block(BlockKind("gpt2", "vld.model.transformer:GPT2Block", "learned", lambda d_model: 4 * d_model))
register_block(BlockKind("llama", "vld.model.transformer:LlamaBlock", "rope", _llama_ff_dim))

__all__ = ["BLOCK_KINDS", "POSITIONS", "BlockKind", "block_kind", "register_block"]
