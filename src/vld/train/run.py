"""Build a Lightning Trainer from a TrainConfig and run a (resumable) training.

`run_training` is what a pipeline stage calls: it seeds everything, resumes from
`out_dir/checkpoints/last.ckpt` when a previous run of the same stage was killed, checkpoints
atomically every `checkpoint_every` steps and at the end, and writes `out_dir/metrics.json`
(global rank 0 only). The model is trained in place; the caller saves it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from torch import nn

from vld.atomic import write_failure, write_json
from vld.errors import fail
from vld.host_speed import END_KEY, START_KEY, gemm_rate
from vld.machine import across_ranks, describe_machine
from vld.train.config import TrainConfig, apply_threads, busy_cores, busy_note, check_devices, machine_cores
from vld.train.datamodules import _WindowDataModuleBase
from vld.train.memory import keep_freed_memory
from vld.train.module import LMModule
from vld.train.quiet import quiet_third_party

CHECKPOINT_DIR = "checkpoints"
LAST = "last.ckpt"
RUN_CONFIG = "train_config.json"  # what the checkpoints were made with; a resume must match it
METRICS = "metrics.json"
# settings a resumed run may change without changing the result
_RESUME_FREE = ("devices", "num_nodes", "strategy", "num_workers", "checkpoint_every", "log_every", "accelerator")


class StepCheckpoint(Callback):
    """Writes checkpoints/last.ckpt every `every` optimizer steps and at the last step.

    Saved right after an optimizer step (never between micro-batches of an accumulation),
    to a temporary file renamed over last.ckpt, so a kill never leaves a truncated checkpoint.
    Also keeps LMModule.train_wall_s current so the rate survives a resume."""

    def __init__(self, dirpath: Path, every: int, max_steps: int):
        self.dirpath, self.every, self.max_steps = Path(dirpath), int(every), int(max_steps)
        self._step_at_batch_start = -1
        self._fit_start = 0.0
        self._wall_before = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()
        self._wall_before = float(getattr(pl_module, "train_wall_s", 0.0))

    def update_wall(self, pl_module: L.LightningModule) -> None:
        if hasattr(pl_module, "train_wall_s") and self._fit_start:
            pl_module.train_wall_s = self._wall_before + (time.perf_counter() - self._fit_start)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_batch_start = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._step_at_batch_start:
            return  # inside a gradient accumulation: no optimizer step happened
        if step >= self.max_steps or (self.every and step % self.every == 0):
            self.update_wall(pl_module)
            self.save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self.update_wall(pl_module)

    def save(self, trainer: L.Trainer) -> None:
        final = self.dirpath / LAST
        tmp = self.dirpath / f".{LAST}.tmp"
        try:
            trainer.save_checkpoint(tmp)  # collective: every rank calls it, rank 0 writes
        except (OSError, RuntimeError) as err:  # a full disk: torch's writer raises RuntimeError
            cause = write_failure(err)
            if cause is None:
                raise
            with contextlib.suppress(OSError):
                tmp.unlink()
            fail(str(final), f"cannot be written ({cause.strerror}); the previous checkpoint is unchanged;"
                             " free space and rerun to resume from it")
        if trainer.is_global_zero:
            os.replace(tmp, final)
        trainer.strategy.barrier("vld.train.checkpoint")


class SameResumeOnEveryRank(Callback):
    """Stops a run whose ranks would resume from different steps.

    Each rank looks for last.ckpt on its own filesystem. A node that cannot see it (no shared
    filesystem) would start from step 0 beside ranks that resume: observed with two nodes on
    one machine, rank 0 then finished with exit status 0 after averaging its gradients with
    those of a fresh rank 1. Checked in `setup`, after the process group exists and before
    Lightning restores the checkpoint; every rank gets the same answer, so all stop together."""

    def __init__(self, checkpoint: Path, step: int):
        self.checkpoint, self.step = checkpoint, step  # step -1: this rank found no checkpoint

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not torch.distributed.is_initialized():  # one process
            return
        mine = torch.tensor([self.step], dtype=torch.long, device=trainer.strategy.root_device)
        gathered = [torch.empty_like(mine) for _ in range(trainer.world_size)]
        torch.distributed.all_gather(gathered, mine)
        steps = [int(t.item()) for t in gathered]
        if len(set(steps)) > 1:
            seen = ", ".join(f"rank {rank}: {'none' if step < 0 else f'step {step}'}"
                             for rank, step in enumerate(steps))
            fail("train", f"the ranks would resume from different steps ({seen}; this rank looked for"
                          f" {self.checkpoint}); run every node in one directory on a filesystem they all"
                          " share, or delete the checkpoints to start over")


class ThreadCount(Callback):
    """hardware.threads in every rank: Lightning's launchers set their own count (the cores
    divided by the processes) before the run when OMP_NUM_THREADS is unset; `setup` comes after."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        apply_threads(self.cfg)


class TimeEstimate(Callback):
    """One line on stdout (global rank 0) early in a run: its estimated time, timed over the
    `measured` micro-batches after the first (the first carries one-off costs), so that a run of
    days says so in its first seconds. It only reads the clock: the run's arithmetic is unchanged.
    Nothing is printed when the run ends within the measured micro-batches.

        vld: pretrain_khop@base: estimated 3.4 h for 1,500 steps x 3 seeds (from micro-batches 2-4)
    """

    def __init__(self, label: str, seeds: int = 1, measured: int = 3):
        self.label, self.seeds, self.measured = label, int(seeds), int(measured)
        self._seen, self._start, self._before = 0, 0.0, 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._seen += 1
        processed = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # of the whole run, resumed too
        if self._seen == 1:
            self._start, self._before = time.perf_counter(), processed - 1  # micro-batches of an earlier fit
            return
        if self._seen != 1 + self.measured:
            return
        per_batch = (time.perf_counter() - self._start) / self.measured
        total = trainer.num_training_batches  # inf for a loader without a length: nothing to estimate
        if processed < total < float("inf") and trainer.is_global_zero:
            from tqdm import tqdm

            steps = int(total - self._before) // max(1, trainer.accumulate_grad_batches)
            tqdm.write(self.line(per_batch * (total - self._before), steps, trainer.max_steps))
            sys.stdout.flush()

    def line(self, seconds: float, steps: int, max_steps: int) -> str:
        """The line for `steps` of this fit (max_steps unless resumed) taking `seconds`."""
        what = f"{max_steps:,} steps" if steps >= max_steps else f"the {steps:,} steps left of {max_steps:,}"
        seeds = f" x {self.seeds} seeds" if self.seeds > 1 else ""
        return (f"vld: {self.label}: estimated {duration(seconds)} for {what}{seeds}"
                f" (from micro-batches 2-{1 + self.measured})")


def duration(seconds: float) -> str:
    """A time for people: 45 s, 12 min, 3.4 h, 2.1 days."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"


class RunProgressBar(TQDMProgressBar):
    """One bar for the whole run, in optimizer steps: steps per second and time left. It counts
    micro-batches (Lightning's own total mixes steps and micro-batches when gradients are
    accumulated) and shows them scaled to steps.

    On a terminal it redraws at every micro-batch. Written to a file or a pipe (`dvc repro > log`,
    CI, a batch job), every redraw (two per micro-batch) stays in the file, so there it redraws at
    most every `file_interval_s` seconds, and at the last micro-batch."""

    file_interval_s = 10.0
    _to_terminal, _last_redraw = True, 0.0  # set from the bar's stream in on_train_start

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.num_training_batches

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        last = batch_idx + 1 >= self.train_progress_bar.total
        if self._to_terminal or last or now - self._last_redraw >= self.file_interval_s:
            self._last_redraw = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _in_steps(self, trainer: L.Trainer) -> None:
        bar = self.train_progress_bar
        bar.unit, bar.unit_scale = "step", 1 / max(1, trainer.accumulate_grad_batches)
        bar.set_description("train")  # one Lightning "epoch" is the whole run

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # a resumed run skips on_train_epoch_start, where the bar gets its total: set it here
        bar = self.train_progress_bar
        isatty = getattr(getattr(bar, "fp", None), "isatty", None)  # its stream; a disabled bar (rank > 0) has none
        self._to_terminal, self._last_redraw = bool(isatty and isatty()), time.monotonic()
        bar.reset(total=self.total_train_batches)
        bar.n = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        self._in_steps(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._in_steps(trainer)


def fsdp_kwargs(model: nn.Module) -> dict[str, Any]:
    """FullyShardedDataParallel's settings for `model` (train.strategy fsdp): each of its blocks
    (model.fsdp_blocks(): the classes of the layers its schedule visits) one FSDP unit, so one
    block's weights are gathered at a time, on each visit; use_orig_params, since LoRA leaves a
    block's base weights frozen beside trainable adapters, which one flat parameter cannot mix."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    blocks = getattr(model, "fsdp_blocks", None)
    if blocks is None:
        fail("train.strategy", f"'fsdp': a {type(model).__name__} names no blocks to shard")
    return {"auto_wrap_policy": ModuleWrapPolicy(set(blocks())), "use_orig_params": True}


def lightning_strategy(cfg: TrainConfig, model: nn.Module | None = None):
    """cfg.strategy as the Trainer takes it; "fsdp": Lightning's FSDPStrategy with fsdp_kwargs(model),
    checkpoints gathered into one file on rank 0 (the format of every other strategy's)."""
    if cfg.strategy != "fsdp":
        return cfg.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    return FSDPStrategy(state_dict_type="full", **fsdp_kwargs(model))


class FullWeights(Callback):
    """Under FSDP, the trained model's whole state dict gathered to global rank 0 at the end
    (`state`, keys without the LightningModule's "model." prefix; None on other ranks and under
    other strategies, where the model itself holds its weights). FSDP wraps the model's blocks
    in place and leaves each rank a shard of each parameter: a caller that saves the model
    loads `state` into a fresh copy."""

    def __init__(self):
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if not isinstance(trainer.strategy, FSDPStrategy):
            return
        state = trainer.strategy.lightning_module_state_dict()  # collective; whole on rank 0 only
        if trainer.is_global_zero:
            self.state = {key.removeprefix("model."): value for key, value in state.items()}


def build_trainer(
    cfg: TrainConfig,
    out_dir: Path,
    logger=None,
    callbacks: Iterable[Callback] = (),
    distributed_sampler: bool = False,
    model: nn.Module | None = None,
) -> L.Trainer:
    """A Trainer for `cfg`: no validation, our own atomic checkpoints, a progress bar.

    `distributed_sampler=False` (our DataModules split each global batch by rank themselves);
    set it for a foreign DataModule so that Lightning adds its DistributedSampler under DDP.
    `model`: what is trained (the blocks FSDP shards, lightning_strategy)."""
    check_devices(cfg)
    quiet_third_party()
    out_dir = Path(out_dir)
    deterministic = "warn" if cfg.accelerator == "cpu" else None
    return L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=lightning_strategy(cfg, model),
        precision=cfg.resolved_precision(),
        max_steps=cfg.max_steps,
        max_epochs=None,  # max_steps ends the run (one Lightning "epoch" = the whole run)
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        gradient_clip_val=cfg.optim.grad_clip or None,
        gradient_clip_algorithm="norm",
        log_every_n_steps=cfg.log_every,
        logger=logger if logger is not None else False,
        callbacks=[  # the checkpoint last: it saves what the other callbacks did at its step
            RunProgressBar(),
            *callbacks,
            StepCheckpoint(out_dir / CHECKPOINT_DIR, cfg.checkpoint_every, cfg.max_steps),
        ],
        enable_checkpointing=False,  # StepCheckpoint does it, atomically
        enable_progress_bar=True,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=distributed_sampler,
        deterministic=deterministic,
        default_root_dir=str(out_dir),
    )


def _resume_checkpoint(run_config: dict[str, Any], ckpt_dir: Path) -> Path | None:
    """last.ckpt when a previous run of this stage left one; refuse one made with other settings."""
    last, saved = ckpt_dir / LAST, ckpt_dir / RUN_CONFIG
    if not last.is_file():
        return None
    if saved.is_file():
        before = json.loads(saved.read_text())
        now = run_config

        def shown(settings: dict, key: str) -> str:  # a setting left out of the record while off
            return repr(settings[key]) if key in settings else "unset"

        for key in sorted(set(before) | set(now)):
            if key not in _RESUME_FREE and before.get(key) != now.get(key):
                fail(
                    f"train.{key}",
                    f"{shown(before, key)} in the checkpoint {last}, {shown(now, key)} now;"
                    f" delete {ckpt_dir} to start over",
                )
    return last


def _checkpoint_step(path: Path) -> int:
    """The optimizer step a checkpoint was saved at (mmap: the weights are not read).

    weights_only: a checkpoint in the work directory may come from anywhere (a copied
    directory, a shared filesystem); unpickling it in full could run code."""
    try:
        return int(torch.load(path, mmap=True, weights_only=True, map_location="cpu")["global_step"])
    except Exception as err:  # truncated, not a checkpoint, or carrying code: say so before any compute
        fail(str(path), f"cannot be read as a training checkpoint ({type(err).__name__}); delete it to start over")


def run_training(
    model: nn.Module,
    datamodule: L.LightningDataModule,
    cfg: TrainConfig,
    out_dir: Path,
    logger=None,
    callbacks: Iterable[Callback] = (),
    loops=None,
    curve_score=None,
) -> dict[str, Any]:
    """Train `model` in place; returns (and writes to out_dir/metrics.json on rank 0)
    final_loss, steps, tokens_seen, train_tokens_per_s, wall_s, loss_curve, and the run
    settings that are resolved per machine: threads (the count the process trained with),
    cpu_gemm (cfg's; the pipeline builds `model` with cfg.backend) and precision, and the
    machine (the CPU and torch, vld.machine; every rank's where a DDP run's ranks differ).

    loops: the core's count per step (vld.train.loops.LoopTraining; None: the model's schedule
    at every step). curve_score: the learning curve's scoring (vld.train.curves), run every
    cfg.curve_every steps (0: never); its points are the metrics' learning_curve."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_vocab(model, datamodule)
    module = LMModule(model, cfg.optim, cfg.max_steps, loops=loops, seeds=(cfg.seed,))
    ours = isinstance(datamodule, _WindowDataModuleBase)
    callbacks = [*callbacks, *curve_callbacks(cfg, curve_score)]
    trainer = fit(module, datamodule, cfg, run_config(cfg, loops), out_dir, logger, callbacks,
                  distributed_sampler=not ours)
    metrics = training_metrics(module.loss_curve, trainer, cfg, module, time.perf_counter() - start,
                               run_machine(trainer))
    if trainer.is_global_zero:
        write_json(out_dir / METRICS, metrics)
    return metrics


def fit(
    module: LMModule,
    datamodule: L.LightningDataModule,
    cfg: TrainConfig,
    run_config: dict[str, Any],
    out_dir: Path,
    logger=None,
    callbacks: Iterable[Callback] = (),
    distributed_sampler: bool = False,
) -> L.Trainer:
    """Seed, then fit `module` under build_trainer(cfg): resumed from out_dir/checkpoints/last.ckpt
    when one was made with the same `run_config` (a killed run of this stage), refused when made
    with another, checkpointed atomically. Returns the Trainer after the fit."""
    ckpt_dir = Path(out_dir) / CHECKPOINT_DIR
    resume = _resume_checkpoint(run_config, ckpt_dir)
    resume_step = _checkpoint_step(resume) if resume else -1

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    apply_threads(cfg)  # a setting: the thread count changes the arithmetic
    if cfg.accelerator == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN before a kernel writes it (a
        # guard against kernels that read memory they never wrote): a large share of a small
        # model's CPU step (docs/model.md, "Where a training step's time goes"). Every kernel
        # the training step runs writes its whole output, so the results are the same without.
        torch.utils.deterministic.fill_uninitialized_memory = False
        keep_freed_memory()  # no fresh pages to fault in at every step; the arithmetic is the same
    if cfg.compile:
        module.compile_training()
    callbacks = [SameResumeOnEveryRank(ckpt_dir / LAST, resume_step), ThreadCount(cfg), *callbacks]
    trainer = build_trainer(cfg, out_dir, logger=logger, callbacks=callbacks, distributed_sampler=distributed_sampler,
                            model=module.model)
    _note_busy_cpu(trainer, cfg)
    if trainer.is_global_zero:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume is None:
            write_json(ckpt_dir / RUN_CONFIG, run_config)
    # the host's own speed at the start and end of the fit: a reference for its tokens/s
    on_cpu = isinstance(trainer.accelerator, CPUAccelerator)  # accelerator "auto" resolved
    host_start = gemm_rate(cfg.cpu_gemm) if on_cpu else None
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None, weights_only=True)
    if host_start is not None:
        module.host_gemm_gflops = (host_start, gemm_rate(cfg.cpu_gemm))
    _reap_ranks_at_exit(trainer)
    return trainer


def run_config(cfg: TrainConfig, loops=None) -> dict[str, Any]:
    """What a checkpoint is made with (a resume must match it): cfg, and the loop counts when they vary."""
    return {**cfg.to_dict(), **({"loops": loops.to_dict()} if loops is not None else {})}


def curve_callbacks(cfg: TrainConfig, score) -> list[Callback]:
    """The learning curve's callback when cfg asks for one and there is a scoring for it."""
    if not cfg.curve_every or score is None:
        return []
    from vld.train.curves import LearningCurve

    return [LearningCurve(cfg.curve_every, score, cfg.max_steps)]


def training_metrics(loss_curve: list[float], trainer: L.Trainer, cfg: TrainConfig, module: LMModule,
                     wall_s: float, machine: dict, model: int = 0) -> dict[str, Any]:
    """A run's metrics (one model's, with its own loss curve; `model`: which of a stacked run's
    models, for its learning curve; `machine`: run_machine's record, one per run)."""
    from vld.train.curves import curve_table

    steps = int(trainer.global_step)
    tokens_seen = steps * cfg.tokens_per_step
    curve = {"learning_curve": curve_table(module.eval_curve, model), "curve_wall_s": module.curve_wall_s} \
        if module.eval_curve else {}
    return {
        **curve,
        "final_loss": loss_curve[-1] if loss_curve else float("nan"),
        "steps": steps,
        "tokens_seen": tokens_seen,
        "train_tokens_per_s": tokens_seen / module.train_wall_s if module.train_wall_s > 0 else 0.0,
        "train_wall_s": module.train_wall_s,
        "wall_s": wall_s,
        "resumed_from_step": module.resumed_from_step,
        "threads": torch.get_num_threads(),  # cfg.threads, unless something changed it while training
        "cpu_gemm": cfg.cpu_gemm,
        "precision": cfg.resolved_precision(),  # "auto" resolved: what the Trainer ran
        **({"compile": True} if cfg.compile else {}),  # recorded where it ran (another arithmetic)
        # vld.host_speed's reference GEMM (float32, this run's library and threads), GFLOP/s at
        # the start and end of the fit; None off the CPU
        **dict(zip((START_KEY, END_KEY), module.host_gemm_gflops or (None, None))),
        "machine": machine,  # the same seed trains to other weights on another CPU
        "loss_curve": list(loss_curve),
    }


def run_machine(trainer: L.Trainer) -> dict:
    """The machine the run computed on (vld.machine), gathered from every rank when there are
    several (every rank calls this: it is a collective then)."""
    machine = describe_machine()
    if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        every: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(every, machine)
        return across_ranks(every)
    return machine


def _note_busy_cpu(trainer: L.Trainer, cfg: TrainConfig) -> None:
    """One line on stderr (rank 0 of a CPU run) when other processes keep cores busy: the run
    keeps hardware.threads; the line names a count that may run faster here."""
    if not isinstance(trainer.accelerator, CPUAccelerator) or not trainer.is_global_zero:
        return
    note = busy_note(cfg.threads, busy_cores(), machine_cores(), cfg.devices)
    if note:
        print(note, file=sys.stderr, flush=True)


def _check_vocab(model: nn.Module, datamodule: L.LightningDataModule) -> None:
    """Token ids the model cannot embed would fail deep inside the first step; say so now."""
    data_vocab = getattr(datamodule, "vocab_size", None)
    config = getattr(model, "config", None)
    model_vocab = getattr(config, "vocab_size", None)
    if isinstance(data_vocab, int) and isinstance(model_vocab, int) and data_vocab > model_vocab:
        fail(
            "model.vocab_size",
            f"{model_vocab} is smaller than the data's vocabulary ({data_vocab}, {getattr(datamodule, 'data_dir', 'data')})",
        )


def _reap_ranks_at_exit(trainer: L.Trainer) -> None:
    """Under strategy "ddp" the launching process (rank 0) started the other ranks but never
    waits for them; wait at interpreter exit (not now: the caller may still run collective
    code on every rank), so that a finished stage leaves no process behind."""
    procs = list(getattr(getattr(trainer.strategy, "launcher", None), "procs", None) or [])
    if procs:
        atexit.register(_wait_or_kill, procs)


def _wait_or_kill(procs: list[subprocess.Popen], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
