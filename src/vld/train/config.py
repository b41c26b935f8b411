"""Training configuration: plain dataclasses, validated without importing torch or lightning.

Validation runs before any compute (and before the ~10 s heavy imports), so a bad
`params.yaml` stops a stage with one line naming the offending key.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from vld.declared import check_keys
from vld.errors import UserError, fail

# Precisions Lightning accepts that make sense here; "auto" picks bf16-mixed on GPU, fp32 on CPU.
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "16-mixed", "bf16-true")
# bf16-mixed on CPU: Lightning's CPU autocast, the linear layers in bfloat16 (vld.model.linear),
# attention, norms and the optimizer in float32; a recorded setting, never a default
CPU_PRECISIONS = ("32-true", "bf16-mixed", "32")
ACCELERATORS = ("cpu", "gpu", "cuda", "auto")
# The TrainConfig fields params.yaml's hardware block may set (where training runs).
HARDWARE_FIELDS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "num_workers", "cpu_gemm",
                   "threads", "compile")
_LAYERED = "<train>"  # placeholder location, replaced by the layer that set the bad value
# Where the config being built was written (params.yaml key), for the errors of __post_init__.
_WHERE: contextvars.ContextVar[str | None] = contextvars.ContextVar("vld_train_config_where", default=None)


@contextlib.contextmanager
def _located(where: str):
    token = _WHERE.set(where)
    try:
        yield
    finally:
        _WHERE.reset(token)


# Lightning's seed_everything (numpy's legacy generator) takes seeds up to this, and raises past it
MAX_SEED = 2**32 - 1
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "single_device")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to lr * min_lr_ratio (the paper's appendix settings)."""

    lr: float = 5e-4
    min_lr_ratio: float = 0.1
    warmup_fraction: float = 0.019
    weight_decay: float = 0.001
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping

    def __post_init__(self):
        self.validate(_WHERE.get() or "optim")  # an instance is valid by construction

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "optim") -> "OptimConfig":
        d = _check_mapping(d, where, cls)
        kwargs = {}
        for key, value in d.items():
            if key == "betas":
                if not isinstance(value, (list, tuple)) or len(value) != 2:
                    fail(f"{where}.betas", f"expected two numbers, got {value!r}")
                kwargs[key] = (_number(value[0], f"{where}.betas[0]"), _number(value[1], f"{where}.betas[1]"))
            else:
                kwargs[key] = _number(value, f"{where}.{key}")
        with _located(where):
            return cls(**kwargs)

    def validate(self, where: str = "optim") -> None:
        for key in ("lr", "min_lr_ratio", "warmup_fraction", "weight_decay", "eps", "grad_clip"):
            _number(getattr(self, key), f"{where}.{key}")
        if not self.lr > 0:
            fail(f"{where}.lr", f"must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            fail(f"{where}.min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.warmup_fraction < 1:
            fail(f"{where}.warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}")
        if self.weight_decay < 0:
            fail(f"{where}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        if not self.eps > 0:
            fail(f"{where}.eps", f"must be > 0, got {self.eps}")
        if self.grad_clip < 0:
            fail(f"{where}.grad_clip", f"must be >= 0 (0 = no clipping), got {self.grad_clip}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            fail(f"{where}.betas", f"expected two numbers in [0, 1), got {self.betas!r}")

    def warmup_steps(self, max_steps: int) -> int:
        return int(round(self.warmup_fraction * max_steps))


@dataclass
class TrainConfig:
    """How to train: steps, batch sizes, devices, precision, checkpoints, logging, optimiser.

    Gradient accumulation = global_batch_size / (micro_batch_size * devices * num_nodes).
    """

    max_steps: int
    global_batch_size: int
    micro_batch_size: int
    seq_len: int
    seed: int = 0
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    checkpoint_every: int = 0  # steps between checkpoints; 0 = only at the end
    log_every: int = 1
    num_workers: int = 0
    # CPU threads per process (torch.set_num_threads, training and evaluation): a setting, since
    # CPU kernels split their sums by thread. None: the cores this process may use divided by
    # the processes per node (`devices`), resolved at construction.
    threads: int | None = None
    # How the model runs (vld.model.Backend): not part of the model, chosen per run. "auto": the
    # library vld.model.backend's table names for this CPU, resolved at construction.
    cpu_gemm: str = "auto"
    activation_checkpointing: bool = False
    # The training forward through torch.compile (inductor): its own kernels, and on CPU
    # the BLAS's GEMMs instead of oneDNN's, so another arithmetic, hence a recorded setting that
    # is off by default; evaluation stays eager. Left out of to_dict while off (fingerprints).
    compile: bool = False
    # learning curve (vld.train.curves): score the model every curve_every steps (0: never) on
    # curve_sequences held-out sequences per test case; left out of to_dict while off
    curve_every: int = 0
    curve_sequences: int = 64
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        where = _WHERE.get() or "train"
        # The machine-dependent defaults become values here, once, so that what is recorded
        # (metrics, MLflow params, the variant's fingerprint, the resume check) is what ran.
        from vld.model.backend import resolve_cpu_gemm

        self.cpu_gemm = resolve_cpu_gemm(self.cpu_gemm, f"{where}.cpu_gemm")
        if self.threads is None:
            processes = self.devices if isinstance(self.devices, int) and self.devices >= 1 else 1
            self.threads = default_threads(processes)
        self.validate(where)  # an instance is valid by construction
        if self.compile and self.accelerator == "cpu":
            check_cpp_compiler(f"{where}.compile")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "train") -> "TrainConfig":
        d = dict(_check_mapping(d, where, cls))
        optim = OptimConfig.from_dict(d.pop("optim", None) or {}, where=f"{where}.optim")
        for key in ("max_steps", "global_batch_size", "micro_batch_size", "seq_len"):
            if key not in d:
                fail(f"{where}.{key}", "missing (required)")
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key in ("activation_checkpointing", "compile"):  # booleans, checked by validate
                kwargs[key] = value
            elif key in ("accelerator", "strategy", "precision", "cpu_gemm"):
                if not isinstance(value, str):
                    fail(f"{where}.{key}", f"expected a string, got {value!r}")
                kwargs[key] = value
            else:
                kwargs[key] = _integer(value, f"{where}.{key}")
        with _located(where):
            return cls(optim=optim, **kwargs)

    @classmethod
    def from_layers(cls, layers: Sequence[tuple[Mapping[str, Any] | None, str]]) -> "TrainConfig":
        """One config from settings written in several places, e.g. params.yaml's hardware
        block, a family's train block and a variant's overrides, as (mapping, where) pairs.

        Later layers override earlier ones key by key (optim too). Each value is validated once,
        and an error names the layer that set the value (`hardware.precision: ...`)."""
        merged: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for layer, where in layers:
            layer = _check_mapping(layer, where, cls)
            for key, value in layer.items():
                if key == "optim" and isinstance(value, Mapping) and isinstance(merged.get("optim"), Mapping):
                    merged["optim"] = {**merged["optim"], **value}
                    origin.update({f"optim.{name}": f"{where}.optim" for name in value})
                else:
                    merged[key] = dict(value) if isinstance(value, Mapping) else value
                    if key == "optim" and isinstance(value, Mapping):
                        origin.update({f"optim.{name}": f"{where}.optim" for name in value})
                origin[key] = where
        try:
            return cls.from_dict(merged, where=_LAYERED)
        except UserError as err:
            text = str(err)
            path = text.split(":", 1)[0][len(_LAYERED) + 1:]
            key = path if path in origin else path.split(".")[0]
            where = origin.get(key, layers[-1][1])
            if key.startswith("optim."):
                named = f"{where}.{path.split('.', 1)[1]}"
            else:
                named = f"{where}.{path}" if path else where
            raise UserError(named + text[len(_LAYERED) + 1 + len(path):]) from None

    def validate(self, where: str = "train") -> None:
        for key in ("max_steps", "global_batch_size", "micro_batch_size", "seq_len", "devices", "num_nodes", "log_every",
                    "threads", "curve_sequences"):
            value = _integer(getattr(self, key), f"{where}.{key}")
            if value < 1:
                fail(f"{where}.{key}", f"must be >= 1, got {value}")
        for key in ("seed", "checkpoint_every", "num_workers", "curve_every"):
            value = _integer(getattr(self, key), f"{where}.{key}")
            if value < 0:
                fail(f"{where}.{key}", f"must be >= 0, got {value}")
        if self.seed > MAX_SEED:
            fail(f"{where}.seed", f"must be <= {MAX_SEED} (2**32 - 1), got {self.seed}")
        if self.accelerator not in ACCELERATORS:
            fail(f"{where}.accelerator", f"unknown {self.accelerator!r}; expected one of {', '.join(ACCELERATORS)}")
        if self.strategy not in STRATEGIES:
            fail(f"{where}.strategy", f"unknown {self.strategy!r}; expected one of {', '.join(STRATEGIES)}")
        if self.strategy == "fsdp" and self.accelerator not in ("gpu", "cuda"):
            # Lightning 2.6.6 refuses FSDP on any other accelerator (AcceleratorConnector.
            # _check_strategy_and_fallback) once a stage has started: say so before any compute
            fail(f"{where}.strategy", f"'fsdp' needs accelerator gpu, not {self.accelerator!r}: Lightning 2.6.6's "
                 "FSDPStrategy runs on CUDA only (docs/lm_retrofit.md#multi-gpu); use ddp or auto on CPU")
        if not isinstance(self.compile, bool):
            fail(f"{where}.compile", f"expected true or false, got {self.compile!r}")
        if self.compile and self.strategy == "fsdp":
            fail(f"{where}.compile", "not with strategy fsdp (the training forward would be compiled before FSDP "
                 "wraps the model); use ddp, or compile: false")
        if self.precision not in PRECISIONS:
            fail(f"{where}.precision", f"unknown {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if self.accelerator == "cpu" and self.resolved_precision() not in CPU_PRECISIONS:
            fail(f"{where}.precision", f"{self.precision!r} on CPU: CPU training takes "
                 f"{' or '.join(map(repr, CPU_PRECISIONS[:2]))} (float32, or its linear layers in bfloat16)")
        per_step = self.micro_batch_size * self.devices * self.num_nodes
        if self.global_batch_size % per_step:
            fail(
                f"{where}.global_batch_size",
                f"{self.global_batch_size} is not a multiple of micro_batch_size * devices * num_nodes"
                f" = {self.micro_batch_size} * {self.devices} * {self.num_nodes} = {per_step}",
            )
        from vld.model.backend import Backend

        Backend.from_dict({"cpu_gemm": self.cpu_gemm, "activation_checkpointing": self.activation_checkpointing}, where)
        if not isinstance(self.optim, OptimConfig):  # valid by construction
            fail(f"{where}.optim", "must be an OptimConfig")

    @property
    def backend(self):
        """The vld.model.Backend the trained model runs with."""
        from vld.model.backend import Backend

        return Backend(self.cpu_gemm, self.activation_checkpointing)

    @property
    def accumulate_grad_batches(self) -> int:
        return self.global_batch_size // (self.micro_batch_size * self.devices * self.num_nodes)

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def resolved_precision(self) -> str:
        """"auto" means bf16-mixed on a GPU and float32 on CPU."""
        if self.precision != "auto":
            return self.precision
        return "bf16-mixed" if self.accelerator in ("gpu", "cuda") else "32-true"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        if not self.curve_every:  # off: as recorded before curves existed (fingerprints, resume checks)
            del d["curve_every"], d["curve_sequences"]
        if not self.compile:  # off: as recorded before the setting existed
            del d["compile"]
        return d


def check_cpp_compiler(where: str) -> None:
    """torch.compile on CPU builds C++ with the compiler inductor calls ($CXX, else g++): one line
    before any compute when there is none, instead of a traceback at the first training step."""
    import shutil

    compiler = os.environ.get("CXX", "g++")  # inductor's own lookup on Linux
    if shutil.which(compiler) is None:
        fail(where, f"torch.compile on CPU needs a C++ compiler, and {compiler!r} is not on PATH "
             "(install g++ or set CXX), or set compile: false")


def check_devices(cfg: TrainConfig, where: str = "train") -> None:
    """A GPU setting on a machine without (enough) GPUs fails here, in one line, instead of as
    Lightning's traceback once a stage has started. torch is imported only when a GPU is asked for,
    or with compile under `auto`: on a machine without a GPU that run is a CPU run, whose compile
    needs a C++ compiler (checked here: where the config is read, the device is not known)."""
    if cfg.compile and cfg.accelerator == "auto":
        import torch

        if not torch.cuda.is_available():
            check_cpp_compiler(f"{where}.compile")
    if cfg.accelerator not in ("gpu", "cuda"):
        return
    import torch

    visible = torch.cuda.device_count()
    if visible == 0:
        fail(f"{where}.accelerator", f"{cfg.accelerator!r}, but torch {torch.__version__} sees no CUDA GPU on this "
             "machine (the CPU profiles: tiny, default, cpu-2h)")
    if cfg.devices > visible:
        fail(f"{where}.devices", f"{cfg.devices} GPUs per node asked for, {visible} visible on this machine")


def _check_mapping(d: Any, where: str, cls: type) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        fail(where, f"expected a mapping, got {type(d).__name__}")
    check_keys(d, cls, where, sort=True)
    return dict(d)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        fail(where, f"expected an integer, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        fail(where, f"expected a finite number, got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------- CPU threads
#
# hardware.threads decides the thread count; the machine's load never does (another count is
# another summation order, so a result would depend on what else ran when the stage started).
# On a busy machine training only says so, in one line, with a count that may run faster.

BUSY_SAMPLE_S = 0.2  # how long the machine's CPU use is sampled for that line


def machine_cores() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's or taskset's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads(processes: int = 1) -> int:
    """hardware.threads when unset: the usable cores shared by the training processes of a node."""
    return max(1, machine_cores() // max(1, processes))


def apply_threads(cfg: TrainConfig) -> int:
    """Run this process's CPU kernels on cfg.threads threads; training and evaluation both call
    it, so a variant is evaluated with the count it was trained with. Returns the count.

    Inter-op threads (torch.jit.fork only) are left alone: they do not split a kernel's sums,
    and torch allows setting them only once per process."""
    import torch

    if torch.get_num_threads() != cfg.threads:
        torch.set_num_threads(cfg.threads)
    return cfg.threads


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat (None where unavailable)."""
    try:
        with open("/proc/stat") as handle:
            fields = [float(x) for x in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_cores(sample_s: float = BUSY_SAMPLE_S) -> float | None:
    """How many of the machine's cores other processes keep busy, sampled over `sample_s`
    while this process sleeps (None where /proc/stat is unavailable)."""
    import time

    before = _cpu_times()
    if before is None:
        return None
    time.sleep(sample_s)
    after = _cpu_times()
    total = after[1] - before[1]
    if total <= 0:
        return 0.0
    return (os.cpu_count() or 1) * (after[0] - before[0]) / total


def busy_note(threads: int, busy: float | None, cores: int, processes: int = 1) -> str | None:
    """The line a training prints when other processes leave fewer free cores than its
    `processes` x `threads` want (None otherwise): it names a count that may run faster,
    and the count stays as set."""
    if busy is None:
        return None
    suggested = max(1, (cores - int(busy + 0.5)) // max(1, processes))
    if suggested >= threads:
        return None
    return (f"vld: note: other processes keep about {busy:.1f} of {cores} cores busy; training with"
            f" hardware.threads={threads} as set; hardware.threads={suggested} may run faster here")
