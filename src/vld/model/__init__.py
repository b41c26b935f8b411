"""vld.model: the VLD transformer and its reuse schedules.

`from vld.model import ScheduleSpec, resolve_schedule, Backend, eval_mode` stays torch-free;
the model names (VLDTransformer, save_model, load_model, hf_state_dict, KVCache) import torch
on first use.
"""

from vld.lazy import lazy_exports
from vld.model.backend import Backend
from vld.model.config import PRESETS, ModelConfig
from vld.model.modes import eval_mode
from vld.model.schedule import BUILTIN_PATTERNS, ScheduleSpec, resolve_schedule

_LAZY = {
    "VLDTransformer": "vld.model.transformer",
    "KVCache": "vld.model.transformer",
    "save_model": "vld.model.transformer",
    "load_model": "vld.model.transformer",
    "hf_state_dict": "vld.model.hf_compat",
}

__getattr__ = lazy_exports("vld.model", _LAZY)


__all__ = [
    "BUILTIN_PATTERNS",
    "Backend",
    "KVCache",
    "ModelConfig",
    "PRESETS",
    "ScheduleSpec",
    "VLDTransformer",
    "eval_mode",
    "hf_state_dict",
    "load_model",
    "resolve_schedule",
    "save_model",
]
