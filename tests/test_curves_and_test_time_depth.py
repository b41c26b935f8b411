"""Learning curves (vld.train.curves) do not change training and score what an independent
count scores; test-time depth (vld.eval.test_time_depth) at the trained count is the ordinary
evaluation and at another count a model built with that schedule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from golden_loss import tiny_model, tiny_train_config
from vld.data.khop import KHopSpec, read_test_sets, write_test_sets
from vld.eval.khop import evaluate_khop
from vld.eval import test_time_depth as ttd
from vld.model import ModelConfig, VLDTransformer, resolve_schedule
from vld.model.schedule import ScheduleSpec
from vld.train.curves import khop_curve_score
from vld.train.datamodules import TokenWindowDataModule
from vld.train.run import run_training
from vld.train.stacked import train_seeds

pytestmark = pytest.mark.usefixtures("one_thread")


def held_out(data_dir, n=6, seq=16):
    """Two 'hop counts' of next-token windows from the token set (any labelled arrays will do)."""
    from vld.data.tokens import TokenSet

    tokens = np.asarray(TokenSet.open(data_dir).tokens[: 2 * n * (seq + 1)], dtype=np.int64).reshape(2, n, seq + 1)
    labels = tokens[:, :, 1:].copy()
    labels[1, :, :4] = -1  # unlabelled positions are left out
    return {0: (tokens[0, :, :-1], labels[0]), 3: (tokens[1, :, :-1], labels[1])}


def errors_of(model, sets):
    """Per-position error of `model` on each set, counted here without vld.train.curves."""
    out = {}
    with torch.no_grad():
        model.eval()
        for k, (x, y) in sets.items():
            predicted = model(torch.as_tensor(x)).argmax(-1).numpy()
            out[f"error_hop{k}"] = float(((predicted != y) & (y >= 0)).sum() / (y >= 0).sum())
        model.train()
    return out


def train(data, out, seeds=(0,), curve_every=0, callbacks=(), dropout=0.1):
    cfgs = [tiny_train_config(max_steps=5, checkpoint_every=2, seed=s, curve_every=curve_every, curve_sequences=6)
            for s in seeds]
    models = [tiny_model(seed=s, dropout=dropout, schedule=[0, 1, 0, 1]) for s in seeds]  # dropout: the RNG matters
    dms = [TokenWindowDataModule(data, c.seq_len, c.micro_batch_size, seed=c.seed) for c in cfgs]
    score = khop_curve_score(held_out(data), batch_size=4)
    return models, train_seeds(models, dms, cfgs, out, callbacks=callbacks, curve_score=score)


@pytest.mark.parametrize("seeds", [(0,), (0, 1)], ids=["single", "stacked"])
def test_curves_leave_training_unchanged_and_score_the_model(tiny_data, tmp_path, seeds):
    plain, plain_metrics = train(tiny_data, tmp_path / "off", seeds)
    curved, metrics = train(tiny_data, tmp_path / "on", seeds, curve_every=2)
    for i in range(len(seeds)):
        a, b = plain[i].state_dict(), curved[i].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert metrics[i]["loss_curve"] == plain_metrics[i]["loss_curve"]
        assert "learning_curve" not in plain_metrics[i]
        curve = metrics[i]["learning_curve"]
        assert curve["steps"] == [0, 2, 4, 5]
        final = errors_of(curved[i], held_out(tiny_data))
        assert {k: v[-1] for k, v in curve.items() if k != "steps"} == pytest.approx(final, abs=1e-12)
        first = errors_of(tiny_model(seed=seeds[i], dropout=0.1, schedule=[0, 1, 0, 1]), held_out(tiny_data))
        assert {k: v[0] for k, v in curve.items() if k != "steps"} == pytest.approx(first, abs=1e-12)
        assert metrics[i]["curve_wall_s"] > 0


class Crash(Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            raise RuntimeError("killed")


def test_a_resumed_run_keeps_its_curve(tiny_data, tmp_path):
    _, whole = train(tiny_data, tmp_path / "whole", curve_every=2, dropout=0.0)
    with pytest.raises(RuntimeError, match="killed"):
        train(tiny_data, tmp_path / "run", curve_every=2, callbacks=[Crash()], dropout=0.0)
    _, resumed = train(tiny_data, tmp_path / "run", curve_every=2, dropout=0.0)
    assert resumed[0]["resumed_from_step"] == 2 and resumed[0]["learning_curve"] == whole[0]["learning_curve"]


# -- test-time depth -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def khop_dir(tmp_path_factory):
    spec = KHopSpec(alphabet=3, length=10, min_hops=0, max_hops=2, test_sequences=12)
    out = tmp_path_factory.mktemp("khop")
    write_test_sets(spec, out)
    return out


def looped_model(k, **recipe):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=16, n_layer=2, d_model=16, n_head=2, max_seq_len=11,
                         schedule=resolve_schedule(ScheduleSpec("cycle", k), 2), **recipe)
    model = VLDTransformer(config).eval()
    if model.injection is not None:
        with torch.no_grad():
            model.injection.mix.weight.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("recipe", [{}, {"inject": "adapter", "residual_scale": "visits"}], ids=["plain", "recipes"])
def test_test_time_depth_is_the_evaluation_of_the_schedule(khop_dir, recipe):
    model = looped_model(1, **recipe)
    schedules = {r: resolve_schedule(ScheduleSpec("cycle", r - 1), 2) for r in (1, 2, 3)}
    found = ttd.test_time_depth(model, khop_dir, schedules, trained=2, batch_size=5)
    assert model.schedule == (0, 1, 0, 1)  # restored
    ordinary = evaluate_khop(model, khop_dir, batch_size=7, bootstrap=10)
    for h, cell in ordinary["hops"].items():
        at_trained = found["repeats"]["2"]["hops"][h]
        assert at_trained["error"] == cell["error"] and at_trained["wrong_per_sequence"] == cell["wrong_per_sequence"]
    for r in (1, 3):
        built = looped_model(r - 1, **recipe)
        built.load_state_dict(model.state_dict())
        direct = evaluate_khop(built, khop_dir, bootstrap=10)
        assert found["repeats"][str(r)]["effective_depth"] == 2 * r
        for h, cell in direct["hops"].items():
            assert found["repeats"][str(r)]["hops"][h]["wrong_per_sequence"] == cell["wrong_per_sequence"]
    assert found["verdict"] in ("help", "hold", "hurt") and found["trained_repeats"] == 2


def test_the_verdict_rule():
    def at(*errors):  # errors at hop counts 0, 2, 3
        return {"hops": {"0": {"error": 0.9}, **{str(h): {"error": e} for h, e in zip((2, 3), errors)}}}

    trained = {"1": at(.5, .5), "2": at(.2, .3)}
    assert ttd.verdict({**trained, "3": at(.1, .2), "4": at(.15, .25)}, 2) == ("help", pytest.approx(-0.075))
    assert ttd.verdict({**trained, "3": at(.2, .31)}, 2)[0] == "hold"
    assert ttd.verdict({**trained, "3": at(.4, .4)}, 2)[0] == "hurt"
    assert ttd.verdict(trained, 2) == ("untested", None)
