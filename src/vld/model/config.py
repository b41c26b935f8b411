"""Model configuration and presets (no torch import: validation stays cheap)."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Mapping

from vld.declared import check_keys
from vld.errors import fail
from vld.model.backend import PARAMS_SPELLING, moved_to_backend
from vld.model.blocks import block_kind
from vld.model.schedule import ScheduleSpec, check_order, loop_layout, resolve_schedule

INJECTIONS = ("add", "adapter")
RESIDUAL_SCALES = ("visits",)
# Loop recipes (docs/recipes.md): off when None, and then left out of to_dict, so the configs
# saved and fingerprinted before they existed stay as they were.
_OPTIONAL = ("inject", "loop_core", "residual_scale")

@dataclass
class ModelConfig:
    """One config for every block kind (vld.model.blocks).

    n_layer is the number of base (distinct) layers L; `schedule` lists the base layer
    visited at each virtual layer (None = identity, each layer once). How the model runs
    (CPU GEMM library, activation checkpointing) is not here: see vld.model.backend.
    """

    vocab_size: int = 50257
    n_layer: int = 4
    d_model: int = 256
    n_head: int = 4
    d_ff: int | None = None  # None: the block kind's default (4*d_model gpt2, 8/3*d_model rounded up to 64 llama)
    max_seq_len: int = 1024
    block: str = "gpt2"  # a registered block kind (vld.model.blocks)
    schedule: list[int] | None = None
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    dropout: float = 0.0
    init_std: float = 0.02
    # the input embedding added back at the start of every repeat of the looped core after the
    # first: "add" as it is, "adapter" through a zero-initialised linear map of [norm(state), norm(embedding)]
    inject: str | None = None
    loop_core: list[int] | None = None  # [a, b]: the looped layers `inject` reads (None: all of them)
    residual_scale: str | None = None  # "visits": a layer visited N times adds 1/N of each residual branch

    @property
    def ff_dim(self) -> int:
        if self.d_ff is not None:
            return self.d_ff
        return block_kind(self.block).ff_dim(self.d_model)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def effective_depth(self) -> int:
        return self.n_layer if self.schedule is None else len(self.schedule)

    def validate(self, where: str = "model") -> "ModelConfig":
        """Check every field; raise a one-line UserError naming the first bad key."""

        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(f"{where}.{name}", f"must be a positive integer, got {value!r}")

        for name in ("vocab_size", "n_layer", "d_model", "n_head", "max_seq_len"):
            positive_int(name)
        if self.d_ff is not None:
            positive_int("d_ff")
        kind = block_kind(self.block, f"{where}.block")
        if self.d_model % self.n_head:
            fail(f"{where}.n_head", f"{self.n_head} heads do not divide d_model {self.d_model}")
        if kind.positions == "rope" and self.head_dim % 2:
            fail(f"{where}.n_head", f"RoPE needs an even head dimension, got {self.head_dim}")
        if not isinstance(self.tie_embeddings, bool):
            fail(f"{where}.tie_embeddings", f"must be true or false, got {self.tie_embeddings!r}")
        for name in ("norm_eps", "rope_theta", "init_std"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                fail(f"{where}.{name}", f"must be a positive number, got {value!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            fail(f"{where}.dropout", f"must be in [0, 1), got {self.dropout!r}")
        if self.schedule is not None:
            self.schedule = check_order(self.schedule, self.n_layer, f"{where}.schedule")
        self._validate_loop(where)
        return self

    def _validate_loop(self, where: str) -> None:
        if self.inject is not None and self.inject not in INJECTIONS:
            fail(f"{where}.inject", f"must be one of {', '.join(INJECTIONS)}, got {self.inject!r}")
        if self.residual_scale is not None and self.residual_scale not in RESIDUAL_SCALES:
            fail(f"{where}.residual_scale", f"must be one of {', '.join(RESIDUAL_SCALES)}, got {self.residual_scale!r}")
        if self.loop_core is not None:
            core = self.loop_core
            if (not isinstance(core, (list, tuple)) or len(core) != 2
                    or not all(isinstance(i, int) and not isinstance(i, bool) for i in core)
                    or not 0 <= core[0] <= core[1] < self.n_layer):
                fail(f"{where}.loop_core", f"must be [a, b] with 0 <= a <= b < n_layer {self.n_layer}, got {core!r}")
            if self.inject is None:
                fail(f"{where}.loop_core", "is read by inject only; set inject or remove it")
            self.loop_core = [int(i) for i in core]
        if self.inject is not None:
            order = self.schedule if self.schedule is not None else list(range(self.n_layer))
            loop_layout(order, self.n_layer, self.loop_core, f"{where}.inject")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in _OPTIONAL:
            if out[key] is None:
                del out[key]
        return out

    @staticmethod
    def without_run_settings(data: Mapping) -> dict:
        """`data` (a saved config) less the keys that moved to vld.model.Backend."""
        return {key: value for key, value in data.items() if key not in PARAMS_SPELLING}

    @classmethod
    def from_dict(
        cls,
        data: Mapping,
        where: str = "model",
        patterns: Mapping[str, str] | None = None,
    ) -> "ModelConfig":
        """Build and validate a config from a mapping (e.g. a params.yaml section).

        `preset: NAME` starts from a preset and the other keys override it. `schedule` may be
        a list of base indices or a ScheduleSpec mapping ({pattern, k, layers, order}),
        resolved against `patterns` (the params.yaml `patterns:` section). The run settings
        that once lived here (cpu_gemm, activation_checkpointing) are a one-line UserError
        naming their new place; `load_model` strips them from old checkpoints.
        """
        if not isinstance(data, Mapping):
            fail(where, f"must be a mapping, got {type(data).__name__}")
        moved_to_backend(data, where)
        values = dict(data)
        base: dict = {}
        if "preset" in values:
            name = values.pop("preset")
            if name not in PRESETS:
                fail(f"{where}.preset", f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
            base = PRESETS[name].to_dict()
        check_keys(values, cls, where, also=("preset",), sort=True)
        base.update(values)
        schedule = base.get("schedule")
        if isinstance(schedule, (Mapping, ScheduleSpec)):
            n_layer = base.get("n_layer", cls.n_layer)
            if not isinstance(n_layer, int) or isinstance(n_layer, bool) or n_layer < 1:
                fail(f"{where}.n_layer", f"must be a positive integer, got {n_layer!r}")
            base["schedule"] = resolve_schedule(schedule, n_layer, patterns, where=f"{where}.schedule")
        elif schedule is not None and not isinstance(schedule, list):
            try:
                base["schedule"] = list(schedule)
            except TypeError:
                fail(f"{where}.schedule", f"must be a list or a schedule mapping, got {schedule!r}")
        return cls(**base).validate(where)


class _Presets(dict):
    """Named configs; each lookup returns a fresh copy so a caller cannot edit the preset."""

    def __getitem__(self, name: str) -> ModelConfig:
        return copy.deepcopy(super().__getitem__(name))

    def get(self, name, default=None):
        return self[name] if name in self else default

    def values(self):
        return [self[name] for name in self]

    def items(self):
        return [(name, self[name]) for name in self]


# vocab_size is a placeholder where the data decides it: override with the token set's size.
PRESETS: dict[str, ModelConfig] = _Presets(
    {
        # Paper, iGSM reasoning: GPT-2 style, hidden 768, 12 heads, context 768.
        "igsm-4l": ModelConfig(vocab_size=2048, n_layer=4, d_model=768, n_head=12, max_seq_len=768),
        "igsm-8l": ModelConfig(vocab_size=2048, n_layer=8, d_model=768, n_head=12, max_seq_len=768),
        "igsm-12l": ModelConfig(vocab_size=2048, n_layer=12, d_model=768, n_head=12, max_seq_len=768),
        "igsm-16l": ModelConfig(vocab_size=2048, n_layer=16, d_model=768, n_head=12, max_seq_len=768),
        # Paper, knowledge capacity: 4 layers, hidden 92/128/156/184 (heads not given in the
        # paper; 4 divides all four widths). Train length 768, eval length 1024.
        "cap-5m": ModelConfig(vocab_size=50257, n_layer=4, d_model=92, n_head=4, max_seq_len=1024),
        "cap-10m": ModelConfig(vocab_size=50257, n_layer=4, d_model=128, n_head=4, max_seq_len=1024),
        "cap-15m": ModelConfig(vocab_size=50257, n_layer=4, d_model=156, n_head=4, max_seq_len=1024),
        "cap-20m": ModelConfig(vocab_size=50257, n_layer=4, d_model=184, n_head=4, max_seq_len=1024),
        # CPU-sized models for the default profile, tests and benchmarks.
        "tiny": ModelConfig(vocab_size=128, n_layer=2, d_model=64, n_head=4, max_seq_len=256),
        "tiny-llama": ModelConfig(vocab_size=128, n_layer=2, d_model=64, n_head=4, max_seq_len=256, block="llama", tie_embeddings=False, norm_eps=1e-6),
        "small": ModelConfig(vocab_size=2048, n_layer=2, d_model=128, n_head=4, max_seq_len=512),
        "bench": ModelConfig(vocab_size=2048, n_layer=4, d_model=256, n_head=4, max_seq_len=256),
    }
)
