"""One call per retrofit variant: validate, apply the schedule, fine-tune, save.

    metrics = retrofit_and_finetune(source, {"pattern": "cycle", "k": 1}, "lora", 4,
                                    train_dir, train_cfg, out_dir)
    metrics = finetune_retrofit(source, schedule, method, lora_rank, datamodule, train_cfg, out_dir)
    model, meta = load_retrofit(out_dir)

Layout of `out_dir`:
    train/           run_training's checkpoints and metrics (resumed when re-run)
    model/           the fine-tuned model, LoRA merged (written whole, atomically):
      retrofit.json  metadata (schedule, method, params, effective depth, ...)
      model.pt       a vld checkpoint (vld sources; `vld.model.load_model` reads it), or
      hf/            a Hugging Face directory of the base layers (Llama sources)
    metrics.json     training metrics + metadata (written last)

With a shared adapter (the paper) the merged model keeps its tied layers. Per-visit adapters
cannot fold into one shared weight: the saved model is unrolled (one layer per visit, schedule
the identity), which computes the same function; `meta["params"]` still counts the trained
(tied + adapters) model.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from vld.errors import fail
from vld.model.backend import Backend
from vld.retrofit.methods import DEFAULT_LORA_RANK, METHODS, check_method
from vld.retrofit import sources
from vld.retrofit.sources import SourceInfo

MODEL_DIR = "model"
TRAIN_DIR = "train"
META_FILE = "retrofit.json"
METRICS_FILE = "metrics.json"
FORMAT_VERSION = 1


def validate_variant(
    source: str | Path | SourceInfo,
    schedule: Mapping[str, Any] | None,
    method: str = "full",
    lora_rank: int = DEFAULT_LORA_RANK,
    patterns: Mapping[str, str] | None = None,
    where: str = "retrofit",
):
    """Check a retrofit variant without loading weights: (SourceInfo, resolved schedule).

    `source`: a path, or the SourceInfo of one already inspected (not inspected again).
    One-line UserError naming the key: an unknown method, a bad rank, a missing or
    unsupported source, a schedule that does not fit the source's layers."""
    from vld.model import resolve_schedule

    check_method(method, lora_rank, where)
    info = source if isinstance(source, SourceInfo) else sources.inspect_source(source, f"{where}.source")
    return info, resolve_schedule(schedule, info.n_layers, patterns, where=f"{where}.schedule")


def prepare_retrofit(
    source: str | Path | SourceInfo,
    schedule: Mapping[str, Any] | None,
    method: str = "full",
    lora_rank: int = DEFAULT_LORA_RANK,
    patterns: Mapping[str, str] | None = None,
    lora_alpha: float | None = None,
    backend: Backend | None = None,
    dtype: str = "float32",
    where: str = "retrofit",
    seed: int = 0,
):
    """Load `source`, apply the schedule, add LoRA if asked: (model, info dict), no training.

    `source`: a path or an inspected SourceInfo. `backend`: a vld.model.Backend (default: the
    default one). Every input is validated (one-line UserError) before any weights are loaded."""
    info, order = validate_variant(source, schedule, method, lora_rank, patterns, where)
    return _load_and_prepare(source, info, order, method, lora_rank, lora_alpha, backend, dtype, seed)


def _load_and_prepare(source, info, order, method, lora_rank, lora_alpha, backend, dtype, seed):
    """prepare_retrofit once the variant is validated."""
    model = sources.load_source(info, dtype)
    base_params = model.parameter_count()
    model.set_schedule(order)
    model.set_backend(Backend() if backend is None else backend)
    if method in ("lora", "lora_per_visit"):
        from vld.retrofit.lora import add_lora

        add_lora(model, lora_rank, alpha=lora_alpha, per_visit=method == "lora_per_visit", seed=seed)
    return model, {
        "source": str(info.path if isinstance(source, SourceInfo) else source),
        "source_kind": info.kind,
        "schedule": list(order),
        "effective_depth": len(order),
        "base_layers": info.n_layers,
        "method": method,
        "lora_rank": lora_rank if method != "full" else None,
        "base_params": base_params,
    }


def parameter_summary(model) -> dict[str, int]:
    unique = {id(p): p for p in model.parameters()}.values()
    return {
        "params": sum(p.numel() for p in unique),
        "trainable_params": sum(p.numel() for p in unique if p.requires_grad),
    }


def retrofit_and_finetune(
    source: str | Path | SourceInfo,
    schedule: Mapping[str, Any] | None,
    method: str,
    lora_rank: int,
    train_dir: str,
    train_cfg,
    out_dir: Path,
    patterns: Mapping[str, str] | None = None,
    logger=None,
    lora_alpha: float | None = None,
    backend: Backend | None = None,
    objective: str = "solution",
    callbacks: Iterable = (),
) -> dict[str, Any]:
    """A whole retrofit variant fine-tuned on an iGSM token set: validate, apply the schedule,
    fine-tune, save; returns metrics.

    source: a path, or a SourceInfo the caller already inspected (the source is inspected
    once per call either way). schedule: ScheduleSpec fields ({"pattern": "base"} is the
    paper's "Base" row). method: one of METHODS. train_dir: an iGSM token set, trained on with
    `objective` (vld.data.igsm.objectives: the source's own, so the fine-tuning matches it).
    backend: a vld.model.Backend (activation checkpointing, CPU GEMMs), default the default.
    callbacks: extra Lightning callbacks of the fine-tuning (the stage's time estimate).
    """
    from vld.data.tokens import TokenSet

    where = "retrofit"
    info, _ = validate_variant(source, schedule, method, lora_rank, patterns, where)
    tokens = TokenSet.open(train_dir)
    model_vocab = info.config.get("vocab_size")
    if isinstance(model_vocab, int) and tokens.vocab_size > model_vocab:
        fail(f"{where}.train_dir", f"{train_dir} has vocab_size {tokens.vocab_size} > the model's {model_vocab}")
    from vld.train.datamodules import igsm_datamodule

    datamodule = igsm_datamodule(objective, train_dir, train_cfg.seq_len, train_cfg.micro_batch_size, train_cfg.seed,
                                 num_workers=train_cfg.num_workers, where=f"{where}.train.seq_len")
    return finetune_retrofit(info, schedule, method, lora_rank, datamodule, train_cfg, out_dir, patterns, logger,
                             lora_alpha, backend, callbacks)


def finetune_retrofit(
    source: str | Path | SourceInfo,
    schedule: Mapping[str, Any] | None,
    method: str,
    lora_rank: int,
    datamodule,
    train_cfg,
    out_dir: Path,
    patterns: Mapping[str, str] | None = None,
    logger=None,
    lora_alpha: float | None = None,
    backend: Backend | None = None,
    callbacks: Iterable = (),
) -> dict[str, Any]:
    """retrofit_and_finetune on any training data: `datamodule` is a Lightning datamodule of
    vld.train.datamodules (a token set, or a k-hop stream); the rest as there."""
    from vld.atomic import check_replaceable

    info, order = validate_variant(source, schedule, method, lora_rank, patterns, "retrofit")
    check_replaceable(Path(out_dir) / MODEL_DIR)
    return train_retrofit(info, info, order, method, lora_rank, datamodule, train_cfg, out_dir, logger, lora_alpha,
                          backend, callbacks)


def train_retrofit(source, info: SourceInfo, order, method: str, lora_rank: int, datamodule, train_cfg, out_dir: Path,
                   logger=None, lora_alpha: float | None = None, backend: Backend | None = None,
                   callbacks: Iterable = ()) -> dict[str, Any]:
    """A validated variant (validate_variant's info and order) loaded, trained on `datamodule`
    (any of vld.train.datamodules) and saved to out_dir; returns metrics and metadata."""
    from vld.atomic import write_json
    from vld.train.run import FullWeights, run_training

    out_dir = Path(out_dir)
    prepare = functools.partial(_load_and_prepare, source, info, order, method, lora_rank, lora_alpha, backend,
                                "float32", train_cfg.seed)
    model, meta = prepare()
    effective_alpha = float(2 * lora_rank if lora_alpha is None else lora_alpha)  # add_lora's default
    meta.update(parameter_summary(model), lora_alpha=effective_alpha if method != "full" else None)

    model.train()  # Lightning keeps submodules' modes: a source loaded for inference is in eval mode
    weights = FullWeights()
    metrics = run_training(model, datamodule, train_cfg, out_dir / TRAIN_DIR, logger=logger,
                           callbacks=[*callbacks, weights])
    result = {**metrics, **meta}
    if _is_global_zero():  # under DDP every rank trains; one writes
        if weights.state is not None:  # FSDP left this rank a shard of each weight: a fresh copy takes them all
            model = prepare()[0]
            model.load_state_dict(weights.state)
        save_retrofit(model, out_dir, meta, in_place=True)
        write_json(out_dir / METRICS_FILE, result)
    return result


def _is_global_zero() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def save_retrofit(model, out_dir: Path, meta: Mapping[str, Any], in_place: bool = False) -> Path:
    """Write the model (LoRA merged) and its metadata to out_dir/model, atomically.

    in_place: merge shared adapters into `model` itself (saves a copy of a large model)."""
    import copy

    from vld.atomic import atomic_dir, write_json
    from vld.retrofit.hf_llama import RetrofitLlama
    from vld.retrofit.lora import lora_modules, merge_lora

    model = model.eval()
    meta = dict(meta)
    meta.setdefault("params", parameter_summary(model)["params"])
    meta.setdefault("effective_depth", model.effective_depth)
    merged = merge_lora(model if in_place else copy.deepcopy(model)) if lora_modules(model) else model
    meta.update(format=FORMAT_VERSION, saved_schedule=list(merged.schedule))
    with atomic_dir(Path(out_dir) / MODEL_DIR) as tmp:
        if isinstance(merged, RetrofitLlama):
            merged.hf.save_pretrained(str(tmp / "hf"))
            meta["model_file"] = "hf"
        else:
            from vld.model import save_model

            save_model(merged, tmp / "model.pt")
            meta["model_file"] = "model.pt"
        write_json(tmp / META_FILE, meta)
    return Path(out_dir) / MODEL_DIR


def load_retrofit(path: str | Path, dtype: str = "float32"):
    """(model, meta) from a retrofit out_dir (or its model/ folder). The model has
    forward(tokens) -> logits and generate(prompts, max_new_tokens, eos_id)."""
    path = Path(path)
    if (path / MODEL_DIR / META_FILE).is_file():
        path = path / MODEL_DIR
    meta_path = path / META_FILE
    if not meta_path.is_file():
        fail(str(path), f"not a retrofit output (no {META_FILE})")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        fail(str(meta_path), f"format {meta.get('format')!r} is not {FORMAT_VERSION}")
    from vld.retrofit.sources import SourceInfo, load_source

    if meta["model_file"] == "hf":
        info = SourceInfo("hf_llama", path / "hf", 0)
    else:
        info = SourceInfo("vld", path / meta["model_file"], 0)
    model = load_source(info, dtype)
    model.set_schedule(meta["saved_schedule"])
    return model.eval(), meta


__all__ = [  # METHODS, DEFAULT_LORA_RANK, check_method live in the torch-free vld.retrofit.methods
    "DEFAULT_LORA_RANK",
    "FORMAT_VERSION",
    "META_FILE",
    "METHODS",
    "METRICS_FILE",
    "MODEL_DIR",
    "TRAIN_DIR",
    "check_method",
    "finetune_retrofit",
    "load_retrofit",
    "parameter_summary",
    "prepare_retrofit",
    "retrofit_and_finetune",
    "save_retrofit",
    "train_retrofit",
    "validate_variant",
]
