"""Loop recipes (docs/recipes.md): each at its neutral setting is the plain model bit for bit,
each at another setting computes what a hand-written loop computes, loop counts are a pure
function of (seed, step) and a killed run resumes to the uninterrupted result, single and
stacked; the params block is recorded only where set."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from golden_loss import tiny_model, tiny_train_config
from vld.errors import UserError
from vld.model import ModelConfig, VLDTransformer, resolve_schedule
from vld.model.schedule import ScheduleSpec, loop_layout, looped_schedule
from vld.train.datamodules import TokenWindowDataModule
from vld.train.loops import LoopTraining, lr_for_repeats
from vld.train.run import run_training
from vld.train.stacked import StackedModel, train_seeds

pytestmark = pytest.mark.usefixtures("one_thread")
VOCAB = 64


def tokens(batch=3, seq=12, seed=1):
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def cycle(k, n_layer=2, layers=None):
    return resolve_schedule(ScheduleSpec("cycle", k, layers=layers), n_layer)


def plain_and(recipe: dict, schedule, n_layer=2, seed=0):
    """The plain model and one with `recipe` (ModelConfig fields), the same initial weights."""
    plain = tiny_model(seed=seed, n_layer=n_layer, schedule=schedule)
    other = tiny_model(seed=seed, n_layer=n_layer, schedule=schedule, **recipe)
    missing, unexpected = other.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and all(name.startswith("injection.") for name in missing)
    return plain, other


# -- the loop layout ------------------------------------------------------------------------

def test_loop_layout_reads_cycle_schedules_and_refuses_others():
    assert loop_layout(cycle(2), 2) == (0, 2, 3)
    assert loop_layout(cycle(1, 4, "1..2"), 4, [1, 2]) == (1, 2, 2)
    for repeats in (1, 2, 5):  # pattern cycle at k = repeats - 1
        assert looped_schedule(4, [1, 2], repeats) == cycle(repeats - 1, 4, "1..2")
        assert looped_schedule(2, None, repeats) == cycle(repeats - 1)
    with pytest.raises(UserError, match=r"^model\.inject: \[0, 0, 1, 1\] is not a looped schedule"):
        ModelConfig(vocab_size=VOCAB, n_layer=2, schedule=[0, 0, 1, 1], inject="add").validate()


# -- neutral settings are the plain model bit for bit -----------------------------------------

def forward_and_grads(model, x):
    logits = model(x)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
    model.zero_grad()
    loss.backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if not n.startswith("injection.")}


@pytest.mark.parametrize("recipe, schedule", [
    ({"inject": "adapter"}, cycle(2)),  # a zero adapter
    ({"inject": "adapter", "loop_core": [1, 2]}, cycle(1, 4, "1..2")),
    ({"residual_scale": "visits"}, None),  # every layer visited once: N = 1
], ids=["adapter", "adapter-core", "scale-N1"])
def test_neutral_model_recipes_are_the_plain_model(recipe, schedule):
    n_layer = 4 if recipe.get("loop_core") else 2
    plain, other = plain_and(recipe, schedule, n_layer)
    x = tokens()
    logits, grads = forward_and_grads(plain, x)
    logits2, grads2 = forward_and_grads(other, x)
    assert torch.equal(logits, logits2)
    assert grads.keys() == grads2.keys() and all(torch.equal(grads[n], grads2[n]) for n in grads)


def test_a_fixed_count_without_curriculum_trains_the_plain_model(tiny_data, tmp_path):
    """Sampling from a point distribution and a curriculum of length 0 set the nominal schedule at
    every step: the weights are the plain run's."""
    schedule = cycle(1)
    runs = []
    for name, loops in (("plain", None), ("neutral", LoopTraining(2, None, 2, "fixed", 0.0))):
        model = tiny_model(schedule=schedule)
        cfg = tiny_train_config(max_steps=4)
        dm = TokenWindowDataModule(tiny_data, cfg.seq_len, cfg.micro_batch_size, seed=cfg.seed)
        metrics = run_training(model, dm, cfg, tmp_path / name, loops=loops)
        runs.append((model.state_dict(), metrics["loss_curve"]))
    (a, curve_a), (b, curve_b) = runs
    assert curve_a == curve_b and all(torch.equal(a[k], b[k]) for k in a)


# -- other settings compute what a hand-written loop computes -----------------------------------

def hand_loop(model, x, scales=None, inject_at=(), adapter=None):
    """Embedding, then each visit's block written out from its parts, the input added (or mixed
    by `adapter`'s weight) before the visits in `inject_at`, branches times scales[visit]."""
    emb = model.tok_emb(x) + model.pos_emb(torch.arange(x.shape[1]))
    h = emb
    for visit, index in enumerate(model.schedule):
        layer = model.layers[index]
        if visit in inject_at:
            if adapter is None:
                h = h + emb
            else:
                both = torch.cat((F.layer_norm(h, (h.shape[-1],), eps=1e-5), F.layer_norm(emb, (h.shape[-1],), eps=1e-5)), -1)
                h = h + both @ adapter.T
        s = 1.0 if scales is None else scales[visit]
        a = layer.norm1(h)
        q, k, v = layer.attn.qkv(a).view(*a.shape[:2], 3, 2, -1).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(a.shape)
        h = h + s * layer.attn.proj(att)
        h = h + s * layer.mlp(layer.norm2(h))
    return model.lm_head(model.norm_f(h))


def test_residual_scaling_divides_each_branch_by_the_visits():
    model = tiny_model(schedule=cycle(2), residual_scale="visits").eval()
    x = tokens()
    with torch.no_grad():
        expected = hand_loop(model, x, scales=[1 / 3] * 6)
        assert torch.allclose(model(x), expected, atol=1e-5)
        # a prelude / core / coda model: layers 0 and 3 once, 1 and 2 twice
        model = tiny_model(n_layer=4, schedule=cycle(1, 4, "1..2"), residual_scale="visits").eval()
        assert torch.allclose(model(x), hand_loop(model, x, scales=[1, .5, .5, .5, .5, 1]), atol=1e-5)


def test_input_injection_adds_the_embedding_at_each_repeat_after_the_first():
    model = tiny_model(schedule=cycle(2), inject="add").eval()
    x = tokens()
    with torch.no_grad():
        assert torch.allclose(model(x), hand_loop(model, x, inject_at=(2, 4)), atol=1e-5)
        model = tiny_model(n_layer=4, schedule=cycle(2, 4, "1..2"), inject="adapter", loop_core=[1, 2]).eval()
        model.injection.mix.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
        expected = hand_loop(model, x, inject_at=(3, 5), adapter=model.injection.mix.weight)
        assert torch.allclose(model(x), expected, atol=1e-5)
        assert not torch.allclose(model(x), hand_loop(model, x), atol=1e-3)  # the adapter does something


def test_a_recipe_model_saves_and_loads_and_refuses_to_unroll(tmp_path):
    from vld.model import load_model, save_model

    model = tiny_model(schedule=cycle(1), inject="adapter", residual_scale="visits")
    save_model(model, tmp_path / "m.pt")
    again = load_model(tmp_path / "m.pt")
    assert again.config == model.config
    x = tokens()
    assert torch.equal(again.eval()(x), model.eval()(x))
    with pytest.raises(UserError, match=r"^unrolled: a model with loop recipes"):
        model.unrolled()
    plain = tiny_model().config.to_dict()
    assert not {"inject", "loop_core", "residual_scale"} & set(plain)  # off: as saved before


# -- loop counts per step ---------------------------------------------------------------------

def test_loop_counts_are_a_pure_function_of_seed_and_step():
    loops = LoopTraining(2, None, 3, "poisson", 0.0)
    draws = [loops.repeats_at(0, step, 1000) for step in range(1000)]
    assert draws == [LoopTraining(2, None, 3, "poisson").repeats_at(0, step, 1000) for step in range(1000)]
    assert draws != [loops.repeats_at(1, step, 1000) for step in range(1000)]
    assert min(draws) == 1 and max(draws) <= 9 and abs(sum(draws) / len(draws) - 3) < 0.15
    uniform = [LoopTraining(2, None, 3, "uniform").repeats_at(0, s, 1000) for s in range(2000)]
    assert set(uniform) == {1, 2, 3, 4, 5} and abs(sum(uniform) / len(uniform) - 3) < 0.1
    # the curriculum: 1, 2, 3 over the first half, each for a sixth, then 3
    ramp = LoopTraining(2, None, 3, "fixed", 0.5)
    assert [ramp.mean_at(s, 600) for s in (0, 99, 100, 199, 200, 299, 300, 599)] == [1, 1, 2, 2, 3, 3, 3, 3]
    assert LoopTraining(2, None, 3, "fixed", 0.0).mean_at(0, 600) == 3


class Crash(Callback):
    """Stops the run right after optimizer step `step` (the last checkpoint before it survives)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


class Counts(Callback):
    """The schedule length of every training micro-batch."""

    def __init__(self):
        self.depths = []

    def on_before_backward(self, trainer, pl_module, loss):
        net = getattr(pl_module.model, "net", pl_module.model)
        self.depths.append(len(net.schedule))


def test_sampled_counts_vary_and_a_killed_run_resumes_to_the_uninterrupted_result(tiny_data, tmp_path):
    loops = LoopTraining(2, None, 2, "uniform", 0.0)
    cfg = tiny_train_config(max_steps=6, checkpoint_every=2)

    def run(out, callbacks=()):
        model = tiny_model(schedule=cycle(1))
        dm = TokenWindowDataModule(tiny_data, cfg.seq_len, cfg.micro_batch_size, seed=cfg.seed)
        return model, run_training(model, dm, cfg, out, callbacks=callbacks, loops=loops)

    counts = Counts()
    whole, whole_metrics = run(tmp_path / "whole", [counts])
    drawn = [loops.repeats_at(0, s, 6) for s in range(6)]
    assert counts.depths == [2 * r for r in drawn for _ in range(2)]  # 2 micro-batches per step
    assert len(set(drawn)) > 1 and whole.schedule == tuple(cycle(1))  # back to the nominal count
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "run", [Crash(3)])
    resumed, metrics = run(tmp_path / "run")
    assert metrics["resumed_from_step"] == 2 and metrics["loss_curve"] == whole_metrics["loss_curve"]
    a, b = resumed.state_dict(), whole.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_stacked_seeds_draw_their_own_counts(tiny_data, tmp_path):
    """Each seed runs its own count (the seeds that drew one run together): the stacked forward
    equals each model's own at its schedule, and a killed stacked run resumes bit-equal."""
    models = [tiny_model(seed=s, schedule=cycle(1), d_model=64) for s in (0, 1, 2)]
    stacked = StackedModel(models)
    x = torch.stack([tokens(seed=s) for s in (0, 1, 2)])
    orders = [cycle(0), cycle(2), cycle(0)]
    with torch.no_grad():
        got = stacked(x, orders)
        for i, model in enumerate(models):
            model.set_schedule(orders[i])
            assert torch.allclose(got[i], model(x[i]), atol=1e-6), i

    loops = LoopTraining(2, None, 2, "uniform", 0.0)

    def run(out, callbacks=()):
        cfgs = [tiny_train_config(max_steps=6, checkpoint_every=2, seed=s) for s in (0, 1)]
        ms = [tiny_model(seed=s, schedule=cycle(1)) for s in (0, 1)]
        dms = [TokenWindowDataModule(tiny_data, c.seq_len, c.micro_batch_size, seed=c.seed) for c in cfgs]
        return ms, train_seeds(ms, dms, cfgs, out, callbacks=callbacks, loops=loops)

    assert [loops.repeats_at(0, s, 6) for s in range(6)] != [loops.repeats_at(1, s, 6) for s in range(6)]
    whole, whole_metrics = run(tmp_path / "whole")
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path / "run", [Crash(3)])
    resumed, metrics = run(tmp_path / "run")
    for i in range(2):
        assert metrics[i]["loss_curve"] == whole_metrics[i]["loss_curve"]
        a, b = resumed[i].state_dict(), whole[i].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert resumed[i].schedule == tuple(cycle(1))


def test_lr_rule():
    assert lr_for_repeats(1e-3, "inverse_sqrt", 1) == 1e-3
    assert lr_for_repeats(1e-3, "inverse_sqrt", 4) == 5e-4
    assert math.isclose(lr_for_repeats(1e-3, "inverse_sqrt", 3), 1e-3 / math.sqrt(3))


# -- params.yaml: a few words on a variant, recorded only where set ---------------------------

def tiny_params(**khop_variants):
    from pathlib import Path

    from vld.pipeline import params as P

    raw = P.load_yaml(Path(__file__).resolve().parents[1] / "conf" / "profiles" / "tiny.yaml")
    raw["khop"]["variants"].update(khop_variants)
    return raw


def validated(raw):
    from vld.pipeline import params as P

    return P.validate(raw, "params.yaml")


def error_of(raw) -> str:
    with pytest.raises(UserError) as info:
        validated(raw)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_recipe_block_sets_model_training_and_records():
    x1 = {"model": "h16", "data": "kh12", "schedule": {"pattern": "cycle", "k": 1}}
    raw = tiny_params(plain=x1, empty={**x1, "recipe": {}},
                      tuned={**x1, "recipe": {"inject": "adapter", "residual_scale": "visits", "loop_sampling": "poisson",
                                              "loop_curriculum": 0.25, "lr_scale": "inverse_sqrt"}})
    for key in ("curve_every", "curve_sequences"):  # the tiny profile draws curves: off here
        raw["khop"]["train"].pop(key, None)
    khop = validated(raw).variants["khop"]
    plain, empty, tuned = khop["plain"], khop["empty"], khop["tuned"]
    assert {**plain.to_dict(), "name": ""} == {**empty.to_dict(), "name": ""}
    assert plain.recipe is None and plain.loops is None
    recorded = plain.to_dict()
    assert "recipe" not in recorded and "curve_every" not in recorded["train"]
    assert not {"inject", "loop_core", "residual_scale"} & set(recorded["model"])
    assert (tuned.model.inject, tuned.model.residual_scale, tuned.model.loop_core) == ("adapter", "visits", None)
    assert tuned.train.optim.lr == plain.train.optim.lr / math.sqrt(2)
    assert tuned.loops == LoopTraining(2, None, 2, "poisson", 0.25)
    assert tuned.to_dict()["recipe"]["loop_sampling"] == "poisson"
    assert tuned.flat_params()["recipe.lr_scale"] == "inverse_sqrt" and "recipe.inject" not in plain.flat_params()
    assert tuned.tags()["vld.recipe"].startswith("inject=adapter, residual_scale=visits")
    assert tuned.for_seed(0).train.optim.lr == tuned.train.optim.lr


def test_recipe_and_curve_errors_are_one_line():
    seq = {"model": "h16", "data": "kh12", "schedule": {"pattern": "inverse_cycle", "k": 1}}
    raw = tiny_params(bad=seq | {"recipe": {"loop_curriculum": 0.5}})
    raw["patterns"]["inverse_cycle"] = "inverse_cycle(0..L-1, k+1)"
    assert error_of(raw).startswith("khop.variants.bad.recipe.loop_curriculum: [0, 1, 1, 0] is not a looped schedule")
    x1 = {"model": "h16", "data": "kh12", "schedule": {"pattern": "cycle", "k": 1}}
    assert error_of(tiny_params(bad=x1 | {"recipe": {"loop_sampling": "normal"}})).startswith(
        "khop.variants.bad.recipe.loop_sampling: must be one of fixed, poisson, uniform")
    assert error_of(tiny_params(bad=x1 | {"recipe": {"inject": "yes"}})).startswith(
        "khop.variants.bad.recipe.inject: must be one of add, adapter")
    assert error_of(tiny_params(bad=x1 | {"recipe": {"loop_curriculum": 2}})).startswith(
        "khop.variants.bad.recipe.loop_curriculum: must be a fraction of training in [0, 1]")
    assert error_of(tiny_params(bad=x1 | {"recipe": {"loops": 3}})).startswith("khop.variants.bad.recipe.loops: unknown key")
    raw = tiny_params()
    raw["retrofit"]["train"]["curve_every"] = 2
    assert error_of(raw).startswith("retrofit.variants.cycle_x1.train.curve_every: learning curves are measured for")
    raw = tiny_params()
    raw["retrofit"]["variants"]["cycle_x1"]["recipe"] = {"inject": "add"}
    assert error_of(raw).startswith("retrofit.variants.cycle_x1.recipe: unknown key")


def test_test_time_schedules():
    raw = tiny_params(x2={"model": "h16", "data": "kh12", "schedule": {"pattern": "cycle", "k": 2}})
    khop = validated(raw).variants["khop"]
    trained, schedules = khop["x2"].test_time_schedules()
    assert trained == 3 and sorted(schedules) == list(range(1, 8))  # cycle x0 .. x6 = 2(k+1)
    assert all(schedules[r] == cycle(r - 1) for r in schedules)
    assert khop["base"].test_time_schedules() is None
    core = dataclasses.replace(khop["x2"], layers="1..1", model=dataclasses.replace(khop["x2"].model, schedule=[0, 1, 1, 1]))
    trained, schedules = core.test_time_schedules()
    assert trained == 3 and sorted(schedules) == list(range(1, 13)) and schedules[2] == [0, 1, 1]
