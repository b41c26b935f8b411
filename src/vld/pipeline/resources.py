"""What each stage needs of this machine, by arithmetic on validated settings, before any compute.

Memory: a lower bound per stage (what the stage cannot do without), refused in one line when
it exceeds this machine's memory. Time: a lower bound per training stage, refused when even an
unreachable speed would take longer than MAX_STAGE_S; a run that is merely long is not refused,
its training stage prints its estimate from its first steps (vld.train.run.TimeEstimate).
The validator (vld.pipeline.params) calls `check_resources`; docs/pipeline.md ("Validation
first") gives the formulas. Torch-free and cheap: nothing is allocated or measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vld.errors import fail

if TYPE_CHECKING:
    from vld.data.khop import KHopSpec
    from vld.model.config import ModelConfig
    from vld.pipeline.plan import Plan, Variant

FLOAT32, INT64 = 4, 8
# Bounds no machine reaches, so that only what cannot finish is refused: a micro-batch (forward,
# backward, dozens of operator dispatches through Lightning's loop) takes longer than 10 us, and
# no device trains faster than 1e16 FLOP/s (above the dense 16-bit rate of any accelerator).
MIN_MICRO_BATCH_S = 1e-5
MAX_DEVICE_FLOPS = 1e16
MAX_STAGE_S = 30 * 86400  # a stage that cannot end within a month is a mistake


@dataclass(frozen=True)
class Need:
    """Memory one part of a stage needs at least: what it is, bytes, the key that sizes it, and
    whether it lives on the accelerator (the model's side) rather than in host memory."""

    what: str
    bytes: int
    key: str
    on_device: bool = True


# ------------------------------------------------------------------------------- the machine


def machine_memory() -> int | None:
    """This machine's memory in bytes (the cgroup's limit when lower); None when unknown."""
    total = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = int(limit) if total is None else min(total, int(limit))
    except OSError:
        pass
    return total or None


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is on this machine, from the driver's /proc entries (CUDA is not
    imported to validate; its memory is then not known, and the model's side is not checked)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def _on_accelerator(variant: Variant) -> bool:
    return variant.train.accelerator in ("gpu", "cuda") or (variant.train.accelerator == "auto" and gpu_visible())


# ------------------------------------------------------------------------------- estimates


def parameters_at_least(model: ModelConfig) -> int:
    """Parameters of `model`, at least: each base layer's attention (4 d^2) and MLP (2 d ff, the
    gated blocks have more), and the token embedding (vocab x d, tied to the head)."""
    d = model.d_model
    return model.n_layer * (4 * d * d + 2 * d * model.ff_dim) + model.vocab_size * d


def _layer_parameters(model: ModelConfig) -> int:
    return 4 * model.d_model ** 2 + 2 * model.d_model * model.ff_dim


def activations_per_token(model: ModelConfig, checkpointing: bool) -> int:
    """float32 values a training step keeps per token for its backward pass, at least: per visited
    layer the two normalised sublayer inputs, q, k, v and the attention output (6 d) and the MLP's
    hidden values before and after its activation (2 ff); the logits and their softmax (2 vocab).
    With activation checkpointing, a layer input per visit and one layer's values."""
    per_visit = 6 * model.d_model + 2 * model.ff_dim
    kept = model.d_model * model.effective_depth + per_visit if checkpointing else per_visit * model.effective_depth
    return kept + 2 * model.vocab_size


def khop_batch_bytes(sequences: int, length: int) -> int:
    """Host memory of `sequences` k-hop sequences generated at once (vld.data.khop.make_sequences):
    inputs and labels, int64, length + 1 each."""
    return 2 * INT64 * sequences * (length + 1)


def training_needs(variant: Variant, raw: dict, seeds_together: bool, khop: KHopSpec | None = None) -> list[Need]:
    """Memory of one process of the variant's training stage, at least (seeds trained together
    each hold their own copy of everything); `raw` is params.yaml (where each size is set),
    `khop` the k-hop data a k-hop variant's stream generates."""
    model, cfg = variant.model, variant.train
    copies = len(variant.seeds) if seeds_together else 1
    # weights, their gradients and AdamW's two moments, all float32; LoRA trains adapters only
    per_parameter = 4 * FLOAT32 if variant.method in (None, "full") else FLOAT32
    needs = [Need("weights, gradients and AdamW state", copies * per_parameter * parameters_at_least(model),
                  width_key(variant)),
             Need("activations", copies * FLOAT32 * cfg.micro_batch_size * cfg.seq_len
                  * activations_per_token(model, cfg.activation_checkpointing),
                  train_key(variant, raw, "micro_batch_size"))]
    if khop is not None:
        # each process generates a step's whole global batch, and permutes it (int64 indices)
        needs.append(Need("k-hop training batch", copies * (khop_batch_bytes(cfg.global_batch_size, khop.length)
                                                            + INT64 * cfg.global_batch_size),
                          train_key(variant, raw, "global_batch_size"), on_device=False))
    return needs


def evaluation_needs(variant: Variant, khop: KHopSpec | None = None) -> list[Need]:
    """Memory of the variant's evaluation stage, at least: one seed's weights, and a k-hop
    variant's test sets (`khop`), all hop counts held at once (int64), and the resamples of
    one hop count's error interval, drawn at once (vld.stats)."""
    needs = [Need("weights", FLOAT32 * parameters_at_least(variant.model), width_key(variant))]
    if khop is not None:
        from vld.eval.khop import bootstrap_resamples
        from vld.stats import bootstrap_bytes

        needs.append(Need("k-hop test sets", len(khop.hop_counts) * khop_batch_bytes(khop.test_sequences, khop.length),
                          f"data.khop.{variant.data}.test_sequences", on_device=False))
        needs.append(Need("bootstrap resamples", bootstrap_bytes(bootstrap_resamples(variant.eval), khop.test_sequences),
                          f"{variant.family}.eval.bootstrap", on_device=False))
    return needs


def training_seconds_at_least(variant: Variant, seeds_together: bool) -> float:
    """The training stage's time at least: its micro-batches at MIN_MICRO_BATCH_S each, or its
    FLOPs (3 x forward: 2 per weight of each visited layer and of the head, per token) at
    MAX_DEVICE_FLOPS on every device, whichever is longer."""
    model, cfg = variant.model, variant.train
    seeds = len(variant.seeds)
    micro_batches = cfg.max_steps * cfg.accumulate_grad_batches * (1 if seeds_together else seeds)
    forward = 2 * (model.effective_depth * _layer_parameters(model) + model.vocab_size * model.d_model)
    flops = 3 * forward * cfg.max_steps * cfg.tokens_per_step * seeds
    return max(micro_batches * MIN_MICRO_BATCH_S, flops / (MAX_DEVICE_FLOPS * cfg.world_size))


# ------------------------------------------------------------------------------- checks


def check_resources(plan: Plan, raw: dict) -> None:
    """Every stage of `plan` (validated from params.yaml, `raw`) against this machine: one line
    naming the key that sizes what cannot fit (the largest part) or cannot finish."""
    from vld.pipeline.families import FAMILIES

    memory = machine_memory()
    if memory is not None:
        for name, spec in plan.data.get("khop", {}).items():
            # the data stage generates one hop count's test set at a time
            _check_memory(f"data_khop@{name}", [Need("one hop count's test set", khop_batch_bytes(
                spec.test_sequences, spec.length), f"data.khop.{name}.test_sequences", on_device=False)], 1, memory)
    for family_name, table in plan.variants.items():
        family = FAMILIES[family_name]
        for variant in table.values():
            khop = plan.data["khop"][variant.data] if family.task == "khop" else None
            stage = f"{family.trained_by}_{family_name}" if family.trained_by == "pretrain" else family.trained_by
            if memory is not None:
                # on a CPU every process of this node holds its own copy; on a GPU only the host side is known
                on_gpu = _on_accelerator(variant)
                stages = {f"{stage}@{variant.name}": training_needs(variant, raw, family.seeds_together, khop),
                          f"evaluate_{family_name}@{variant.name}": evaluation_needs(variant, khop)}
                for label, needs in stages.items():
                    needs = [need for need in needs if not (on_gpu and need.on_device)]
                    _check_memory(label, needs, variant.train.devices, memory)
            seconds = training_seconds_at_least(variant, family.seeds_together)
            if seconds > MAX_STAGE_S:
                cfg = variant.train
                fail(train_key(variant, raw, "max_steps"),
                     f"{stage}@{variant.name} would train for at least {seconds / 86400:,.0f} days"
                     f" ({cfg.max_steps:,} steps of {cfg.global_batch_size:,} sequences x {_count(len(variant.seeds), 'seed')}, at under"
                     f" {1 / MIN_MICRO_BATCH_S:,.0f} micro-batches/s and {MAX_DEVICE_FLOPS:.0e} FLOP/s per device),"
                     f" over the {MAX_STAGE_S // 86400}-day limit of a stage")


def _check_memory(label: str, needs: list[Need], processes: int, memory: int) -> None:
    total = processes * sum(need.bytes for need in needs)
    if total <= memory:
        return
    largest = max(needs, key=lambda need: need.bytes)
    parts = ", ".join(f"{need.what} {size(need.bytes)}" for need in needs)
    each = f" per process x {processes}" if processes > 1 else ""
    fail(largest.key, f"{label} needs at least {size(total)} of memory ({parts}{each}), more than this machine's"
         f" {size(memory)}")


def width_key(variant: Variant) -> str:
    """The key that sizes the weights: parameters grow with d_model squared, n_layer only linearly."""
    return f"models.{variant.model_name}.d_model"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def train_key(variant: Variant, raw: dict, name: str) -> str:
    """The key of params.yaml (`raw`) that sets train setting `name` of `variant`: the most
    specific of its own train block, its family's, the hardware block (the family's when none
    sets it)."""
    family = raw.get(variant.family) or {}
    own = ((family.get("variants") or {}).get(variant.name) or {}).get("train") or {}
    if name in own:
        return f"{variant.key}.train.{name}"
    if name not in (family.get("train") or {}) and name in (raw.get("hardware") or {}):
        return f"hardware.{name}"
    return f"{variant.family}.train.{name}"


def size(count: float) -> str:
    """Bytes for people: 1.5 GiB, 384 TiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if count < 1024 or unit == "EiB":
            return f"{count:,.0f} {unit}" if unit == "B" or count >= 100 else f"{count:.3g} {unit}"
        count /= 1024
    raise AssertionError("unreachable")
