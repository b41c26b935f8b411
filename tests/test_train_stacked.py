"""vld.train.stacked: seeds of one variant trained together as one stacked model, against
single runs of each seed (one seed: bit for bit; several: the same data exactly, the same
weights to float32 rounding), per-seed gradient clipping, a killed stacked run resumed, and
DDP over 2 processes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from test_train_ddp import launch, metrics_of, processes_in_group
from vld.errors import UserError
from vld.train.datamodules import TokenWindowDataModule
from golden_loss import GOLDEN_FILE, compare, tiny_model, tiny_train_config
from vld.train.run import run_training
from vld.train.stacked import StackedModel, clip_grad_norm_per_model, seed_dir, train_seeds

# Stacked seed i against a single run of seed i, after 4 steps at lr 5e-3: the forward values
# are equal, but LayerNorm's weight and bias gradients are summed over rows in another order
# under vmap, and the per-seed clipping norm is reduced in another order than clip_grad_norm_'s,
# so the weights differ by float32 rounding carried through AdamW (measured: 2.6e-7). Clipping
# all seeds by their joint norm instead gives 1.3e-3: this tolerance tells the two apart.
WEIGHT_TOLERANCE = 1e-5
# 2 processes x 1 micro-batch against 1 process x 2 (as tests/test_train_ddp.py): float32 rounding
DDP_TOLERANCE = 1e-5
WIDE = dict(d_model=64, n_head=2)  # wide enough that the oneDNN linear path runs (vld.model.linear.MIN_MACS)


pytestmark = pytest.mark.usefixtures("one_thread")



class BatchLog(Callback):
    """Every micro-batch fed to training_step, as fed."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append(batch)


def seeds_run(data: Path, seeds: list[int], model: dict | None = None, **train):
    cfgs = [tiny_train_config(**train, seed=seed) for seed in seeds]
    models = [tiny_model(seed=seed, **(model or {})) for seed in seeds]
    datamodules = [TokenWindowDataModule(data, c.seq_len, c.micro_batch_size, seed=c.seed) for c in cfgs]
    return models, datamodules, cfgs


def single_run(data: Path, out: Path, seed: int, model: dict | None = None, callbacks=(), **train):
    [model], [datamodule], [cfg] = seeds_run(data, [seed], model, **train)
    return model, run_training(model, datamodule, cfg, out, callbacks=callbacks)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_seed_is_run_training_bit_for_bit(tiny_data, tmp_path):
    single, single_metrics = single_run(tiny_data, tmp_path / "single", 0)
    models, datamodules, cfgs = seeds_run(tiny_data, [0])
    [metrics] = train_seeds(models, datamodules, cfgs, tmp_path / "seeds")
    assert state_equal(models[0].state_dict(), single.state_dict())
    assert metrics["loss_curve"] == single_metrics["loss_curve"]
    assert compare(metrics["loss_curve"], json.loads(GOLDEN_FILE.read_text())) == []  # the golden loss
    assert json.loads((tmp_path / "seeds" / "metrics.json").read_text()) == metrics


def test_stacked_seeds_match_their_single_runs(tiny_data, tmp_path):
    seeds = [0, 1]
    train = dict(max_steps=4, optim={"grad_clip": 0.05})  # every step clips
    models, datamodules, cfgs = seeds_run(tiny_data, seeds, WIDE, **train)
    stacked_log = BatchLog()
    metrics = train_seeds(models, datamodules, cfgs, tmp_path / "stacked", callbacks=[stacked_log])
    assert len(stacked_log.batches) == 4 * 2  # 2 micro-batches per step

    for i, seed in enumerate(seeds):
        log = BatchLog()
        single, single_metrics = single_run(tiny_data, tmp_path / f"single{seed}", seed, WIDE, [log], **train)
        # the data stream is the single run's exactly
        assert len(log.batches) == len(stacked_log.batches)
        assert all(torch.equal(ours[i], theirs) for ours, theirs in zip(stacked_log.batches, log.batches))
        got, want = models[i].state_dict(), single.state_dict()
        assert got.keys() == want.keys()
        assert max((got[k] - want[k]).abs().max().item() for k in got) < WEIGHT_TOLERANCE
        assert metrics[i]["loss_curve"] == pytest.approx(single_metrics["loss_curve"], abs=WEIGHT_TOLERANCE, rel=0)
        assert metrics[i].keys() == single_metrics.keys()
        assert metrics[i]["steps"] == 4 and metrics[i]["tokens_seen"] == single_metrics["tokens_seen"]
        assert json.loads((seed_dir(tmp_path / "stacked", seed) / "metrics.json").read_text()) == metrics[i]
    # the seeds did not train one model
    assert (models[0].tok_emb.weight - models[1].tok_emb.weight).abs().max() > 1e-2


def test_each_seeds_loss_goes_to_a_logger_and_nothing_changes_without_one(tiny_data, tmp_path):
    """With a logger, every step logs each seed's loss and the learning rate; without one (the
    pipeline logs each seed's curve to its own MLflow run after the fit) those calls are skipped,
    which changes no number."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    train = dict(max_steps=3, log_every=1)
    models, datamodules, cfgs = seeds_run(tiny_data, [0, 1], **train)
    logger = CSVLogger(tmp_path / "logs", name="stacked", version=0)
    logged = train_seeds(models, datamodules, cfgs, tmp_path / "logged", logger=logger)
    rows = list(csv.DictReader(open(tmp_path / "logs" / "stacked" / "version_0" / "metrics.csv")))
    for i, seed in enumerate([0, 1]):
        values = [float(r[f"train/loss_seed{seed}"]) for r in rows if r.get(f"train/loss_seed{seed}")]
        assert values == pytest.approx(logged[i]["loss_curve"], rel=1e-6)
    assert len([r for r in rows if r.get("train/lr")]) == 3

    bare_models, datamodules, cfgs = seeds_run(tiny_data, [0, 1], **train)
    bare = train_seeds(bare_models, datamodules, cfgs, tmp_path / "bare")
    assert [m["loss_curve"] for m in bare] == [m["loss_curve"] for m in logged]
    assert all(state_equal(a.state_dict(), b.state_dict()) for a, b in zip(models, bare_models))


# bf16-mixed: the seeds' linear layers run their own bfloat16 GEMMs (vld.model.linear.CastLinear),
# so a stacked seed differs from its single run only by the float32 rounding above, which can
# tip a value to the neighbouring bfloat16 on a cast: after the same 4 steps, 3e-4 and 9.5e-4
# (measured, Intel Xeon family 6 model 207), against 1.1e-2 from the float32 single run and 9e-3
# from the bf16 single run without clipping.
BF16_WEIGHT_TOLERANCE = 3e-3


def test_stacked_bf16_seeds_end_where_their_single_bf16_runs_do(tiny_data, tmp_path):
    seeds = [0, 1]
    train = dict(max_steps=4, optim={"grad_clip": 0.05}, precision="bf16-mixed")
    models, datamodules, cfgs = seeds_run(tiny_data, seeds, WIDE, **train)
    metrics = train_seeds(models, datamodules, cfgs, tmp_path / "stacked")

    def distance(a: dict, b: dict) -> float:
        return max((a[k] - b[k]).abs().max().item() for k in a)

    for i, seed in enumerate(seeds):
        single, single_metrics = single_run(tiny_data, tmp_path / f"bf16_{seed}", seed, WIDE, **train)
        float32, _ = single_run(tiny_data, tmp_path / f"fp32_{seed}", seed, WIDE, max_steps=4, optim={"grad_clip": 0.05})
        ours = models[i].state_dict()
        to_single = distance(ours, single.state_dict())
        assert to_single < BF16_WEIGHT_TOLERANCE
        assert distance(ours, float32.state_dict()) > 3 * to_single  # it did train in bfloat16 (measured: 14-32x)
        assert metrics[i]["loss_curve"] == pytest.approx(single_metrics["loss_curve"], abs=1e-3, rel=0)
        assert metrics[i]["precision"] == single_metrics["precision"] == "bf16-mixed"


def test_khop_stream_of_each_seed_is_its_single_runs(tmp_path):
    """The k-hop stream (a pure function of seed and step, labelled positions): stacked seed i
    is fed exactly the batches of its single run, and ends within WEIGHT_TOLERANCE of it."""
    from vld.data.khop import KHopSpec
    from vld.train.datamodules import KHopDataModule

    spec = KHopSpec(alphabet=4, length=15, min_hops=0, max_hops=2)
    model = dict(vocab_size=spec.vocab_size, max_seq_len=spec.seq_len)
    cfgs = [tiny_train_config(seed=seed, max_steps=3, seq_len=spec.seq_len) for seed in (3, 5)]

    def parts(cfg):
        return (tiny_model(seed=cfg.seed, **model),
                KHopDataModule(spec, cfg.global_batch_size, cfg.micro_batch_size, seed=cfg.seed), cfg)

    seeds = [parts(cfg) for cfg in cfgs]
    stacked_log = BatchLog()
    train_seeds([p[0] for p in seeds], [p[1] for p in seeds], cfgs, tmp_path / "stacked", callbacks=[stacked_log])
    for i, cfg in enumerate(cfgs):
        single, datamodule, _ = parts(cfg)
        log = BatchLog()
        run_training(single, datamodule, cfg, tmp_path / f"single{i}", callbacks=[log])
        assert len(log.batches) == len(stacked_log.batches) == 3 * 2
        for ours, theirs in zip(stacked_log.batches, log.batches):
            assert ours[i].keys() == theirs.keys() == {"inputs", "labels"}
            assert all(torch.equal(ours[i][key], theirs[key]) for key in theirs)
        got, want = seeds[i][0].state_dict(), single.state_dict()
        assert max((got[k] - want[k]).abs().max().item() for k in got) < WEIGHT_TOLERANCE
    assert not torch.equal(stacked_log.batches[0][0]["inputs"], stacked_log.batches[0][1]["inputs"])


@pytest.mark.parametrize("cpu_gemm", ["onednn", "blas"])
def test_stacked_forward_runs_each_models_own_gemms(cpu_gemm):
    """Under vmap the linear layers (either library, named explicitly: `auto` differs by CPU) and
    the block-causal attention keep each model's own calls: the logits are bit-equal to each
    model's own, and those paths really ran."""
    from vld.model import Backend

    models = [tiny_model(seed=seed, backend=Backend(cpu_gemm=cpu_gemm), **WIDE) for seed in range(3)]
    tokens = torch.randint(0, 64, (3, 4, 32), generator=torch.Generator().manual_seed(0))
    logits = StackedModel(models)(tokens)
    for i, model in enumerate(models):
        assert torch.equal(logits[i], model(tokens[i]))
    visited, stack = {}, [logits.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and id(node) not in visited:
            visited[id(node)] = type(node).__name__
            stack.extend(next_node for next_node, _ in node.next_functions)
    assert "BlockCausalAttentionBackward" in visited.values()
    assert ("OneDNNLinearBackward" in visited.values()) == (cpu_gemm == "onednn")


def test_stacked_forward_with_trained_norms_is_each_models_own_within_rounding():
    """Once LayerNorm's weight and bias have moved from 1 and 0, vmap's LayerNorm (normalise, then
    multiply and add per seed) rounds differently from the fused kernel of a single run: each
    seed's logits stay its own model's to float32 rounding, and not another seed's."""
    models = [tiny_model(seed=seed, **WIDE) for seed in range(3)]
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for model in models:
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(0.1 * torch.randn(p.shape, generator=generator))
    tokens = torch.randint(0, 64, (3, 4, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = StackedModel(models)(tokens)
        own = [model(tokens[i]) for i, model in enumerate(models)]
        swapped = models[1](tokens[0])  # another seed's weights on seed 0's tokens
    for i in range(3):
        torch.testing.assert_close(logits[i], own[i], rtol=0, atol=1e-5)
    assert (logits[0] - swapped).abs().max() > 1e-2


def test_activation_checkpointing_is_turned_off_in_the_stack_with_a_note(capsys):
    """torch.utils.checkpoint cannot recompute inside vmap: the stack runs without it (same
    values), says so, and leaves the caller's models as they were."""
    from vld.model import Backend

    models = [tiny_model(seed=seed, backend=Backend(activation_checkpointing=True)) for seed in range(2)]
    stacked = StackedModel(models)
    assert "without activation checkpointing" in capsys.readouterr().err
    assert all(model.backend.activation_checkpointing for model in models)
    tokens = torch.randint(0, 64, (2, 4, 32), generator=torch.Generator().manual_seed(0))
    logits = stacked(tokens)
    logits.sum().backward()  # with checkpointing inside vmap this raised
    for i, model in enumerate(models):
        assert torch.equal(logits[i], model(tokens[i]))


def test_each_model_is_clipped_by_its_own_norm():
    generator = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (5,), (3, 4, 2)]
    scales = [1000.0, 1e-3, 2.0]  # model 0 far above the limit, model 1 far below, model 2 near it
    params = [torch.zeros(3, *shape, requires_grad=True) for shape in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * torch.tensor(scales).view(-1, *(1,) * (p.ndim - 1))
    per_model = [[p.grad[i].clone() for p in params] for i in range(3)]
    max_norm = 1.0
    totals = clip_grad_norm_per_model(params, max_norm)
    for i, grads in enumerate(per_model):
        before = [g.clone() for g in grads]
        holders = [torch.zeros_like(g, requires_grad=True) for g in grads]
        for holder, g in zip(holders, grads):
            holder.grad = g
        want_total = torch.nn.utils.clip_grad_norm_(holders, max_norm)
        assert totals[i].item() == pytest.approx(want_total.item(), rel=1e-6)
        for p, holder in zip(params, holders):
            torch.testing.assert_close(p.grad[i], holder.grad, rtol=1e-6, atol=0)
        if i == 1:  # below the limit: untouched, however large model 0's gradients are
            assert all(torch.equal(p.grad[1], g) for p, g in zip(params, before))
    assert totals[0] > 100 * max_norm and totals[1] < max_norm


@pytest.mark.slow
def test_killed_stacked_run_resumes_bit_equal_per_seed(tiny_data, tmp_path):
    args = ["--data", str(tiny_data), "--train", json.dumps({"checkpoint_every": 4}), "--seeds", "0", "1"]
    killed, pgid = launch([*args, "--out", str(tmp_path / "run")], env={"VLD_TEST_EXIT_AFTER_STEP": "6"})
    assert killed.returncode == 17, killed.stdout[-3000:]
    assert processes_in_group(pgid) == []
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4 and [len(step) for step in checkpoint["vld_loss_curve"]] == [2] * 4

    resumed_run, _ = launch([*args, "--out", str(tmp_path / "run"), "--save-model", str(tmp_path / "resumed.pt")])
    assert resumed_run.returncode == 0, resumed_run.stdout[-3000:]
    resumed = metrics_of(resumed_run.stdout)
    assert [m["resumed_from_step"] for m in resumed] == [4, 4]

    models, datamodules, cfgs = seeds_run(tiny_data, [0, 1], checkpoint_every=4)
    whole = train_seeds(models, datamodules, cfgs, tmp_path / "whole")  # uninterrupted
    saved = torch.load(tmp_path / "resumed.pt")
    for i in range(2):
        for key in ("final_loss", "steps", "tokens_seen", "loss_curve"):
            assert resumed[i][key] == whole[i][key], (i, key)
        assert state_equal(saved[i], models[i].state_dict())  # bit-equal weights, seed by seed

    # a checkpoint made with other seeds is refused, before any compute
    models, datamodules, cfgs = seeds_run(tiny_data, [0, 2], checkpoint_every=4)
    with pytest.raises(UserError, match=r"^train\.seed: \[0, 1\] in the checkpoint .*, \[0, 2\] now;"):
        train_seeds(models, datamodules, cfgs, tmp_path / "run")


@pytest.mark.slow
def test_two_process_ddp_stacked_matches_one_process(tiny_data, tmp_path):
    ddp_train = {"devices": 2, "strategy": "ddp", "micro_batch_size": 4}  # global batch 8: no accumulation
    result, pgid = launch(["--data", str(tiny_data), "--out", str(tmp_path / "ddp"), "--train", json.dumps(ddp_train),
                           "--seeds", "0", "1", "--save-model", str(tmp_path / "ddp.pt")])
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Starting with 2 processes" in result.stdout
    assert processes_in_group(pgid) == []
    ddp = metrics_of(result.stdout)

    models, datamodules, cfgs = seeds_run(tiny_data, [0, 1])  # 1 process, 2 micro-batches of 4
    one = train_seeds(models, datamodules, cfgs, tmp_path / "one")
    saved = torch.load(tmp_path / "ddp.pt")
    for i, seed in enumerate((0, 1)):
        assert ddp[i]["steps"] == one[i]["steps"] == 10
        assert ddp[i]["loss_curve"] == pytest.approx(one[i]["loss_curve"], abs=DDP_TOLERANCE, rel=0)
        state = models[i].state_dict()
        assert max((saved[i][k] - state[k]).abs().max().item() for k in state) < 1e-4
        assert json.loads((seed_dir(tmp_path / "ddp", seed) / "metrics.json").read_text()) == ddp[i]
    assert abs(ddp[0]["final_loss"] - ddp[1]["final_loss"]) > 1e-4  # two seeds, not one twice
