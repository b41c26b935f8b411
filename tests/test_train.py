"""vld.train in one process: config validation, loss, optimiser groups and schedule, the
window order, determinism, metrics and checkpoints, the MLflow logger, biographies."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from vld.errors import UserError
from vld.train.config import OptimConfig, TrainConfig
from vld.train.datamodules import BiographyDataModule, StepSampler, TokenWindowDataModule, epoch_permutation
from vld.train.module import LMModule, lr_factor, next_token_loss, parameter_groups
from vld.train.run import RunProgressBar, TimeEstimate, run_training

from golden_loss import tiny_model, tiny_train_config


pytestmark = pytest.mark.usefixtures("one_thread")



def train_tiny(data: Path, out: Path, model=None, logger=None, callbacks=(), **overrides):
    cfg = tiny_train_config(**overrides)
    model = model if model is not None else tiny_model(seed=0)
    dm = TokenWindowDataModule(data, cfg.seq_len, cfg.micro_batch_size, seed=cfg.seed, num_workers=cfg.num_workers)
    return model, run_training(model, dm, cfg, out, logger=logger, callbacks=callbacks)


# ---------------------------------------------------------------- config


def test_config_defaults_are_the_papers_and_accumulation_is_derived():
    cfg = TrainConfig.from_dict({"max_steps": 100, "global_batch_size": 64, "micro_batch_size": 8, "seq_len": 32, "devices": 2})
    assert cfg.optim == OptimConfig(5e-4, 0.1, 0.019, 0.001, (0.9, 0.95), 1e-8, 1.0)
    assert cfg.accumulate_grad_batches == 4
    assert cfg.resolved_precision() == "32-true"
    assert TrainConfig.from_dict({**cfg.to_dict(), "accelerator": "gpu"}).resolved_precision() == "bf16-mixed"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "d, where",
    [
        ({"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 3, "seq_len": 8}, "train.global_batch_size:"),
        ({"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 8, "lr": 1e-3}, "train.lr:"),
        ({"max_steps": 0, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 8}, "train.max_steps:"),
        ({"global_batch_size": 8, "micro_batch_size": 4, "seq_len": 8}, "train.max_steps:"),
        ({"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": "8"}, "train.seq_len:"),
        ({"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 8, "precision": "bf16-true"}, "train.precision:"),
        ({"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 8, "strategy": "dp"}, "train.strategy:"),
        ({"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 8, "optim": {"lr": -1}}, "train.optim.lr:"),
        ({"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 8, "optim": {"beta": 0.9}}, "train.optim.beta:"),
        ({"max_steps": 10, "global_batch_size": 8, "micro_batch_size": 4, "seq_len": 8, "optim": {"betas": [0.9]}}, "train.optim.betas:"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(d, where):
    with pytest.raises(UserError) as err:
        TrainConfig.from_dict(d)
    message = str(err.value)
    assert message.startswith(where) and "\n" not in message


def test_config_module_does_not_import_torch():
    code = "import sys, vld.train.config; assert 'torch' not in sys.modules and 'lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- loss, optimiser, schedule


def test_next_token_loss_with_and_without_mask():
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    per_token = -torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    assert torch.equal(next_token_loss(logits, targets), torch.nn.functional.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1)))
    mask = torch.tensor([[1, 0, 0, 1, 1], [0, 0, 0, 0, 1]])
    expected = (per_token * mask).sum() / 4
    assert torch.allclose(next_token_loss(logits, targets, mask), expected, atol=1e-6, rtol=0)
    assert next_token_loss(logits, targets, torch.zeros_like(mask)).item() == 0.0


def test_lr_schedule_warmup_then_cosine_to_min():
    assert [lr_factor(s, 100, 4, 0.1) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 100, 4, 0.1) == 1.0
    assert lr_factor(52, 100, 4, 0.1) == pytest.approx(0.55)  # half way down the cosine
    assert lr_factor(100, 100, 4, 0.1) == pytest.approx(0.1)
    assert lr_factor(0, 10, 0, 0.1) == 1.0


def test_no_weight_decay_on_embeddings_norms_biases_and_tied_head_counted_once():
    model = tiny_model()
    groups = parameter_groups(model, 0.1)
    decay = {id(p) for p in groups[0]["params"]}
    no_decay = {id(p) for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert not decay & no_decay
    assert len(decay) + len(no_decay) == len(list(model.parameters()))  # unique tensors
    for name, param in model.named_parameters():
        is_embedding = any(isinstance(m, nn.Embedding) and param is m.weight for m in model.modules())
        assert (id(param) in no_decay) == (param.ndim < 2 or is_embedding), name
    assert any(p.ndim == 2 for p in groups[0]["params"])


def test_the_optimizer_updates_weights_exactly_as_a_loop_over_the_parameters():
    """LMModule's AdamW runs foreach for speed; its weights must be bit-equal to AdamW's plain
    per-parameter loop (foreach=False) with the same groups, lr schedule and gradients."""
    weights = []
    for foreach in (None, False):  # None: LMModule's own optimizer
        torch.manual_seed(0)
        model = tiny_model(seed=1)
        module = LMModule(model, OptimConfig(lr=5e-3, weight_decay=0.1, warmup_fraction=0.3), max_steps=6)
        if foreach is None:
            optimizer = module.configure_optimizers()["optimizer"]
        else:
            optimizer = torch.optim.AdamW(module.optimizer_groups(), lr=5e-3, betas=(0.9, 0.95), eps=1e-8,
                                          foreach=False)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, 6, 2, 0.1))
        tokens = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(2))
        for _ in range(6):
            next_token_loss(model(tokens[:, :-1]), tokens[:, 1:]).backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
        weights.append([p.detach().clone() for p in model.parameters()])
    ours, loop = weights
    assert all(torch.equal(a, b) for a, b in zip(ours, loop))
    assert not all(torch.equal(a, b) for a, b in zip(ours, [p.detach() for p in tiny_model(seed=1).parameters()]))


def test_optimizer_lr_follows_the_schedule_during_training(tiny_data, tmp_path):
    from lightning.pytorch.loggers import Logger

    class Recorder(Logger):
        name, version = "recorder", "0"
        calls: list = []

        @property
        def experiment(self):
            return None

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.calls.append((step, dict(metrics)))

    recorder = Recorder()
    _, metrics = train_tiny(tiny_data, tmp_path / "run", logger=recorder, log_every=2, optim={"warmup_fraction": 0.2})
    lrs = [m["train/lr"] for _, m in recorder.calls]
    losses = [m["train/loss"] for _, m in recorder.calls]
    # steps 2, 4, ... 10 (0-based optimizer steps 1, 3, ...): warmup of 2 steps, then cosine
    assert len(recorder.calls) == 5
    assert lrs == pytest.approx([5e-3 * lr_factor(s, 10, 2, 0.1) for s in (1, 3, 5, 7, 9)], rel=1e-6)
    assert losses == pytest.approx(metrics["loss_curve"][1::2], rel=1e-6)
    # without a logger the learning rate is not logged (LMModule.log_step), the loss still is (the
    # progress bar shows it), and no number changes
    from lightning.pytorch.callbacks import Callback

    class LoggedKeys(Callback):
        def __init__(self):
            self.keys = set()

        def on_train_batch_end(self, trainer, *args):
            self.keys |= set(trainer.callback_metrics)

    seen = LoggedKeys()
    _, bare = train_tiny(tiny_data, tmp_path / "bare", log_every=2, optim={"warmup_fraction": 0.2}, callbacks=[seen])
    assert "train/loss" in seen.keys and "train/lr" not in seen.keys, seen.keys
    assert bare["loss_curve"] == metrics["loss_curve"]


# ---------------------------------------------------------------- window order


def stream(world_size: int, accumulation: int, m: int = 3, steps: int = 7, start: int = 0, n: int = 10):
    """Per step, the micro-batches of all ranks in rank order (each a list of (epoch, window))."""
    ranks = [
        list(StepSampler(lambda e: n, 5, m, accumulation, r, world_size, steps, lambda: start)) for r in range(world_size)
    ]
    per_rank_step = m * accumulation
    return [
        [ranks[r][(s - start) * per_rank_step + a * m : (s - start) * per_rank_step + (a + 1) * m] for r in range(world_size) for a in range(accumulation)]
        for s in range(start, steps)
    ]


def test_same_micro_batches_with_one_or_two_processes_and_on_resume():
    one = stream(world_size=1, accumulation=4)
    assert one == stream(world_size=2, accumulation=2) == stream(world_size=4, accumulation=1)
    assert stream(world_size=2, accumulation=2, start=3) == one[3:]
    flat = [item for step in one for batch in step for item in batch]
    # every window once per data epoch; each epoch its own permutation
    assert len(flat) == 84
    assert [sorted(w for e, w in flat if e == epoch) for epoch in range(8)] == [list(range(10))] * 8
    assert [w for e, w in flat if e == 8] == epoch_permutation(10, 5, 8).tolist()[:4]
    assert [w for e, w in flat[:10]] == epoch_permutation(10, 5, 0).tolist()
    assert epoch_permutation(10, 5, 0).tolist() != epoch_permutation(10, 5, 1).tolist()
    assert epoch_permutation(10, 5, 0).tolist() != epoch_permutation(10, 6, 0).tolist()


def test_loader_batches_do_not_depend_on_workers(tiny_data):
    class FakeTrainer:
        max_steps, accumulate_grad_batches, global_rank, world_size, global_step = 3, 2, 0, 1, 0

    def batches(workers):
        dm = TokenWindowDataModule(tiny_data, 32, 4, seed=1, num_workers=workers)
        dm.trainer = FakeTrainer()
        return list(dm.train_dataloader())

    zero, two = batches(0), batches(2)
    assert len(zero) == 6 and all(b.shape == (4, 33) and b.dtype == torch.int64 for b in zero)
    assert all(torch.equal(a, b) for a, b in zip(zero, two))
    tokens = torch.from_numpy(__import__("numpy").load(tiny_data / "tokens.npy").astype("int64"))
    first = zero[0][0]
    start = [i for i in range(0, len(tokens) - 32, 32) if torch.equal(tokens[i : i + 33], first)]
    assert len(start) == 1  # a window is a contiguous slice of seq_len + 1 tokens at a stride of seq_len


# ---------------------------------------------------------------- training runs


def test_same_seed_same_curve_and_metrics(tiny_data, tmp_path):
    model_a, a = train_tiny(tiny_data, tmp_path / "a")
    model_b, b = train_tiny(tiny_data, tmp_path / "b")
    _, other_seed = train_tiny(tiny_data, tmp_path / "c", seed=1)
    assert a["loss_curve"] == b["loss_curve"] and len(a["loss_curve"]) == 10
    assert all(torch.equal(x, y) for x, y in zip(model_a.state_dict().values(), model_b.state_dict().values()))
    assert other_seed["loss_curve"] != a["loss_curve"]
    assert a["loss_curve"][-1] < a["loss_curve"][0] - 0.2  # it learns
    assert a["final_loss"] == a["loss_curve"][-1]
    assert a["steps"] == 10 and a["tokens_seen"] == 10 * 8 * 32 and a["resumed_from_step"] == 0
    assert a["train_tokens_per_s"] > 0 and a["wall_s"] >= a["train_wall_s"] > 0
    assert a["host_gemm_gflops_start"] > 0 and a["host_gemm_gflops_end"] > 0  # the host's own speed, timed
    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == a
    assert (tmp_path / "a" / "checkpoints" / "last.ckpt").is_file()
    assert not [p for p in (tmp_path / "a" / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_timing_the_host_changes_no_arithmetic(tiny_data, tmp_path, monkeypatch):
    """The reference GEMM runs inside the fit, after seeding: were it to draw random numbers or
    leave other state behind, the weights would differ from a fit that does not time it."""
    import vld.train.run as run

    timed_model, timed = train_tiny(tiny_data, tmp_path / "timed")
    timed_rng = torch.get_rng_state()
    monkeypatch.setattr(run, "gemm_rate", lambda cpu_gemm: -1.0)  # no GEMM at all, a marked rate
    untimed_model, untimed = train_tiny(tiny_data, tmp_path / "untimed")
    assert untimed["host_gemm_gflops_start"] == untimed["host_gemm_gflops_end"] == -1.0
    assert torch.equal(timed_rng, torch.get_rng_state())  # no random number drawn (a draw would show even without dropout)
    if not torch.cuda.is_available():  # accelerator "auto" resolves to this CPU: timed there too
        monkeypatch.undo()
        _, auto = train_tiny(tiny_data, tmp_path / "auto", accelerator="auto", max_steps=2)
        assert auto["host_gemm_gflops_start"] > 0 and auto["host_gemm_gflops_end"] > 0
    assert timed["loss_curve"] == untimed["loss_curve"]
    assert all(torch.equal(x, y) for x, y in zip(timed_model.state_dict().values(), untimed_model.state_dict().values()))


def test_the_host_is_timed_at_the_runs_thread_count_and_library(tiny_data, tmp_path, monkeypatch):
    """The reference must run as the training does (its threads, its GEMM library), or it would
    not be the speed the run's tokens/s are read against."""
    import vld.train.run as run

    seen = []
    monkeypatch.setattr(run, "gemm_rate", lambda cpu_gemm: seen.append((torch.get_num_threads(), cpu_gemm)) or 1.0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train_tiny(tiny_data, tmp_path / "one", threads=1, cpu_gemm="blas", max_steps=2)
    finally:
        torch.set_num_threads(before)
    assert seen == [(1, "blas"), (1, "blas")]  # at the start and at the end of the fit


def test_the_time_estimate_is_one_early_line_and_changes_no_arithmetic(tiny_data, tmp_path, capsys):
    model_plain, plain = train_tiny(tiny_data, tmp_path / "plain")
    assert "vld: golden" not in capsys.readouterr().out
    model_timed, timed = train_tiny(tiny_data, tmp_path / "timed", callbacks=[TimeEstimate("golden", measured=3)])
    lines = re.findall(r"vld: golden:[^\r\n]*", capsys.readouterr().out)
    # 10 steps of 2 micro-batches: timed over micro-batches 2, 3 and 4, printed after the 4th
    assert len(lines) == 1 and re.fullmatch(r"vld: golden: estimated \d+ s for 10 steps \(from micro-batches 2-4\)",
                                            lines[0]), lines
    assert timed["loss_curve"] == plain["loss_curve"]
    assert all(torch.equal(a, b) for a, b in zip(model_plain.state_dict().values(), model_timed.state_dict().values()))
    # resumed at step 4 (of a killed run): the steps left; a run shorter than the timing: no line
    train_tiny(tiny_data, tmp_path / "resumed", max_steps=4)
    (tmp_path / "resumed" / "checkpoints" / "train_config.json").unlink()  # allow the longer run to resume it
    train_tiny(tiny_data, tmp_path / "resumed", callbacks=[TimeEstimate("again", measured=3)])
    lines = re.findall(r"vld: again:[^\r\n]*", capsys.readouterr().out)
    assert len(lines) == 1 and re.fullmatch(r"vld: again: estimated \d+ s for the 6 steps left of 10 \(from"
                                            r" micro-batches 2-4\)", lines[0]), lines
    train_tiny(tiny_data, tmp_path / "short", max_steps=2, callbacks=[TimeEstimate("short", measured=3)])
    assert "vld: short" not in capsys.readouterr().out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _bar_redraws(output: str) -> list[str]:
    return [line for line in re.split(r"[\r\n]+", output) if line.startswith("train:")]


def test_the_progress_bar_redraws_every_step_on_a_terminal_only(tiny_data, tmp_path, capsys, monkeypatch):
    micro_batches = 12 * tiny_train_config().accumulate_grad_batches
    # off a terminal (captured here, as in a file or a pipe), with an interval no run reaches
    # however slow the machine: as many redraws whatever the run's length, the last at its last step
    monkeypatch.setattr(RunProgressBar, "file_interval_s", 1e9)
    train_tiny(tiny_data, tmp_path / "short", max_steps=4)
    redraws_short = _bar_redraws(capsys.readouterr().out)
    _, long = train_tiny(tiny_data, tmp_path / "long", max_steps=12)
    redraws_long = _bar_redraws(capsys.readouterr().out)
    assert len(redraws_short) == len(redraws_long) <= 8, (redraws_short, redraws_long)
    assert "12.0/12.0 [" in redraws_long[-1] and "4.0/4.0 [" in redraws_short[-1]
    # off a terminal with a zero interval: the interval has always passed, so a redraw at every
    # micro-batch, on top of the redraws the run makes anyway (all but the last micro-batch's)
    monkeypatch.setattr(RunProgressBar, "file_interval_s", 0.0)
    train_tiny(tiny_data, tmp_path / "no_interval", max_steps=12)
    assert len(_bar_redraws(capsys.readouterr().out)) >= micro_batches + len(redraws_long) - 2
    # on a terminal, whatever the interval: a redraw at every micro-batch
    monkeypatch.setattr(RunProgressBar, "file_interval_s", 1e9)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    _, on_terminal = train_tiny(tiny_data, tmp_path / "terminal", max_steps=12)
    assert len(_bar_redraws(terminal.getvalue())) >= micro_batches + len(redraws_long) - 2
    assert on_terminal["loss_curve"] == long["loss_curve"]


def test_a_finished_run_run_again_returns_its_metrics_without_training(tiny_data, tmp_path):
    model, first = train_tiny(tiny_data, tmp_path / "run")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = tiny_model(seed=0)
    _, again = train_tiny(tiny_data, tmp_path / "run", model=fresh)
    assert again["loss_curve"] == first["loss_curve"] and again["resumed_from_step"] == 10
    assert all(torch.equal(weights[k], v) for k, v in fresh.state_dict().items())  # restored from last.ckpt


def test_resume_with_other_settings_is_refused(tiny_data, tmp_path):
    train_tiny(tiny_data, tmp_path / "run", max_steps=2)
    with pytest.raises(UserError, match=r"^train\.max_steps: 2 in the checkpoint"):
        train_tiny(tiny_data, tmp_path / "run", max_steps=3)


def test_a_truncated_checkpoint_is_one_line_before_training(tiny_data, tmp_path):
    train_tiny(tiny_data, tmp_path / "run", max_steps=2)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(UserError, match=rf"^{re.escape(str(last))}: cannot be read as a training checkpoint \(\w+\);"):
        train_tiny(tiny_data, tmp_path / "run", max_steps=2)


def test_any_module_returning_logits_or_an_output_with_logits(tiny_data, tmp_path):
    class Bigram(nn.Module):  # a stand-in: no vld.model code
        def __init__(self, hf_style: bool):
            super().__init__()
            self.table = nn.Embedding(64, 64)
            self.hf_style = hf_style

        def forward(self, tokens):
            logits = self.table(tokens)
            return type("Output", (), {"logits": logits})() if self.hf_style else logits

    torch.manual_seed(0)
    plain = Bigram(False)
    hf = Bigram(True)
    hf.load_state_dict(plain.state_dict())
    _, a = train_tiny(tiny_data, tmp_path / "plain", model=plain, optim={"lr": 0.05})
    _, b = train_tiny(tiny_data, tmp_path / "hf", model=hf, optim={"lr": 0.05})
    assert a["loss_curve"] == b["loss_curve"]
    assert a["final_loss"] < math.log(64) - 0.1


def test_loss_mask_from_a_dict_batch():
    torch.manual_seed(0)
    module = LMModule(tiny_model(), OptimConfig(), max_steps=1)
    tokens = torch.randint(0, 64, (2, 9))
    mask = torch.zeros(2, 8)
    mask[:, -1] = 1
    module._micro_losses.clear()
    masked = module.training_step({"tokens": tokens, "loss_mask": mask}, 0)
    logits = module(tokens[:, :-1])
    assert torch.allclose(masked, torch.nn.functional.cross_entropy(logits[:, -1], tokens[:, -1]), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_mlflow_logger_gets_every_step_loss(tiny_data, tmp_path):
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logger = MLFlowLogger(experiment_name="train-test", tracking_uri=uri, run_name="tiny")
    _, metrics = train_tiny(tiny_data, tmp_path / "run", logger=logger, log_every=1)
    history = MlflowClient(tracking_uri=uri).get_metric_history(logger.run_id, "train/loss")
    assert [h.value for h in sorted(history, key=lambda h: h.step)] == pytest.approx(metrics["loss_curve"], rel=1e-6)
    assert sorted(h.step for h in history) == list(range(10))


def test_biographies_fixed_and_fresh(tmp_path):
    from vld.data.knowledge import biographies

    data = tmp_path / "bio"
    biographies.main(["--people", "40", "--mode", "fresh", "--seed", "0", "--out", str(data)])

    class FakeTrainer:
        max_steps, accumulate_grad_batches, global_rank, world_size, global_step = 200, 1, 0, 1, 0

    fresh = BiographyDataModule(data, 32, 4, seed=0, mode="fresh")
    fresh.trainer = FakeTrainer()
    epoch0 = fresh.fresh.epoch_size(0)
    items = list(fresh.train_dataloader().sampler)
    epochs = sorted({e for e, _ in items})
    assert epochs[:2] == [0, 1] and sum(1 for e, _ in items if e == 0) == epoch0
    renderer = biographies.BiographyRenderer(data)
    tokens1 = renderer.render(1, 0)[0]
    assert torch.equal(fresh.fresh[(1, 0)], torch.from_numpy(tokens1[:33].astype("int64")))
    assert not torch.equal(fresh.fresh[(0, 0)], fresh.fresh[(1, 0)])  # re-rendered each epoch

    cfg = tiny_train_config(max_steps=3)
    model = tiny_model(vocab_size=BiographyDataModule(data, 32, 4).vocab_size)
    fixed = run_training(model, BiographyDataModule(data, 32, 4, mode="fixed"), cfg, tmp_path / "fixed")
    again = run_training(
        tiny_model(vocab_size=renderer.vocab_size), BiographyDataModule(data, 32, 4, mode="fresh"), cfg, tmp_path / "fresh"
    )
    assert fixed["steps"] == again["steps"] == 3 and all(math.isfinite(x) for x in fixed["loss_curve"] + again["loss_curve"])
    with pytest.raises(UserError, match=r"^data\.mode:"):
        BiographyDataModule(data, 32, 4, mode="stale")


def test_missing_data_and_too_small_model_vocab_fail_before_training(tiny_data, tmp_path):
    with pytest.raises(UserError, match=r"data directory not found"):
        TokenWindowDataModule(tmp_path / "nowhere", 32, 4)
    cfg = tiny_train_config()
    small = tiny_model(vocab_size=32)
    with pytest.raises(UserError, match=r"^model\.vocab_size: 32 is smaller than the data's vocabulary \(64"):
        run_training(small, TokenWindowDataModule(tiny_data, 32, 4), cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def test_a_foreign_datamodule_and_lmmodule_without_max_steps(tiny_data, tmp_path):
    import lightning as L
    from torch.utils.data import DataLoader

    class Plain(L.LightningDataModule):
        def train_dataloader(self):
            torch.manual_seed(3)
            return DataLoader(torch.randint(0, 64, (64, 33)), batch_size=4, shuffle=False)

    cfg = tiny_train_config(max_steps=3)
    metrics = run_training(tiny_model(), Plain(), cfg, tmp_path / "run")
    assert metrics["steps"] == 3 and len(metrics["loss_curve"]) == 3
    module = LMModule(tiny_model(), OptimConfig(lr=1.0, warmup_fraction=0.5))
    module.trainer = type("T", (), {"max_steps": 4})()  # the schedule length comes from the Trainer
    scheduler = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert scheduler.get_last_lr()[0] == 0.5
