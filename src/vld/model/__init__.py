"""vld.model: the VLD transformer and its reuse schedules.

`from vld.model import ScheduleSpec, resolve_schedule, Backend, eval_mode, register_block`
stays torch-free; the model names (VLDTransformer, Block, StepInput, run_visits, save_model,
load_model, hf_state_dict, KVCache) import torch on first use.
"""

from vld.lazy import lazy_exports
from vld.model.backend import Backend
from vld.model.blocks import BLOCK_KINDS, BlockKind, register_block
from vld.model.config import PRESETS, ModelConfig
from vld.model.modes import eval_mode
from vld.model.schedule import BUILTIN_PATTERNS, ScheduleSpec, resolve_schedule

_LAZY = {
    "VLDTransformer": "vld.model.transformer",
    "Block": "vld.model.transformer",
    "StepInput": "vld.model.transformer",
    "run_visits": "vld.model.step",
    "KVCache": "vld.model.transformer",
    "save_model": "vld.model.transformer",
    "load_model": "vld.model.transformer",
    "hf_state_dict": "vld.model.hf_compat",
}

__getattr__ = lazy_exports("vld.model", _LAZY)


__all__ = [
    "BLOCK_KINDS",
    "BUILTIN_PATTERNS",
    "Backend",
    "Block",
    "BlockKind",
    "KVCache",
    "ModelConfig",
    "PRESETS",
    "ScheduleSpec",
    "StepInput",
    "VLDTransformer",
    "eval_mode",
    "hf_state_dict",
    "load_model",
    "register_block",
    "resolve_schedule",
    "run_visits",
    "save_model",
]
