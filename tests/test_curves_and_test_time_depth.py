"""Learning curves (vld.train.curves: k-hop, knowledge, iGSM) do not change training and score
what an independent count, or the final evaluation on the same items, scores; test-time depth
(vld.eval.test_time_depth) at the trained count is the ordinary evaluation and at another count
a model built with that schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from golden_loss import tiny_model, tiny_train_config
from igsm_sets import igsm_train_and_test
from vld.data.khop import KHopSpec, read_test_sets, write_test_sets
from vld.errors import UserError
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


# -- knowledge and iGSM learning curves ---------------------------------------------------------

def train_on(datamodule_of, score, out, seeds, curve_every, **model):
    """Train the tiny model (dropout on: the RNG matters) for 5 steps on datamodule_of(cfg)."""
    cfgs = [tiny_train_config(max_steps=5, checkpoint_every=2, seed=s, curve_every=curve_every, curve_sequences=5,
                              micro_batch_size=4, global_batch_size=4) for s in seeds]
    models = [tiny_model(seed=s, dropout=0.1, schedule=[0, 1, 0, 1], **model) for s in seeds]
    metrics = train_seeds(models, [datamodule_of(c) for c in cfgs], cfgs, out, curve_score=score)
    return models, metrics


def assert_same_training(plain, plain_metrics, curved, metrics):
    for i in range(len(plain)):
        a, b = plain[i].state_dict(), curved[i].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert metrics[i]["loss_curve"] == plain_metrics[i]["loss_curve"]
        assert metrics[i]["learning_curve"]["steps"] == [0, 2, 4, 5]


@pytest.fixture(scope="module")
def random_tokens_dir(tmp_path_factory):
    from vld.data.knowledge.random_tokens import make_random_tokens

    # 64 windows of 32 predictions exactly (k = 64 * 32 + 1): no tail window
    return make_random_tokens(64 * 32 + 1, 16, 0, tmp_path_factory.mktemp("rt") / "data")


def absorbed_per_token(model, data_dir, seq_len, picks):
    """Absorbed bits per predicted token on windows `picks` (window w feeds tokens[w*L : w*L+L]
    and predicts the next ones), entropy and cross-entropy measures, counted here in float64."""
    from vld.data.tokens import TokenSet

    token_set = TokenSet.open(data_dir)
    tokens = np.asarray(token_set.tokens, dtype=np.int64)
    windows = torch.as_tensor(np.stack([tokens[w * seq_len: w * seq_len + seq_len + 1] for w in picks]))
    with torch.no_grad():
        model.eval()
        log_p = torch.log_softmax(model(windows[:, :-1]).double(), dim=-1)
        model.train()
    entropy_bits = -(log_p.exp() * log_p).sum(-1) / math.log(2)
    loss_bits = -log_p.gather(-1, windows[:, 1:, None]).squeeze(-1) / math.log(2)
    top = math.log2(token_set.vocab_size)
    return {"absorbed_bits_entropy_per_token": top - float(entropy_bits.mean()),
            "absorbed_bits_ce_per_token": top - float(loss_bits.mean())}


@pytest.mark.parametrize("seeds", [(0,), (0, 1)], ids=["single", "stacked"])
def test_knowledge_curves_leave_training_unchanged_and_score_the_evaluation(random_tokens_dir, tmp_path, seeds):
    from vld.eval.knowledge import all_knowledge_measures
    from vld.train.curves import knowledge_curve_score

    score = knowledge_curve_score(random_tokens_dir, 32, 5, {"batch_size": 3})
    dm = lambda c: TokenWindowDataModule(random_tokens_dir, c.seq_len, c.micro_batch_size, seed=c.seed)
    plain, plain_metrics = train_on(dm, score, tmp_path / "off", seeds, 0)
    curved, metrics = train_on(dm, score, tmp_path / "on", seeds, 2)
    assert_same_training(plain, plain_metrics, curved, metrics)
    picks = [0, 16, 32, 47, 63]  # 5 of the 64 windows, evenly spread from the first to the last
    for i, seed in enumerate(seeds):
        curve = metrics[i]["learning_curve"]
        assert set(curve) == {"steps", "absorbed_bits_entropy_per_token", "absorbed_bits_ce_per_token"}
        last = {k: v[-1] for k, v in curve.items() if k != "steps"}
        # the final evaluation on the same windows, exactly; and counted here
        final = all_knowledge_measures(curved[i], random_tokens_dir, 32, batch_size=3, limit=5)
        assert final["n_predicted"] == 5 * 32 and final["eval_limit"] == 5
        assert last == {k: final[k] for k in last}
        assert last == pytest.approx(absorbed_per_token(curved[i], random_tokens_dir, 32, picks), rel=1e-9)
        first = absorbed_per_token(tiny_model(seed=seed, dropout=0.1, schedule=[0, 1, 0, 1]), random_tokens_dir, 32, picks)
        assert {k: v[0] for k, v in curve.items() if k != "steps"} == pytest.approx(first, rel=1e-9)
        assert last != pytest.approx(first)  # it trained


class EachModel:
    """What a curve's scoring sees of the models being trained: each one alone."""

    def __init__(self, *models):
        self.models = models

    def each_model(self):
        yield from self.models


def test_a_biography_curve_is_the_capacity_per_person_of_a_subset(tmp_path):
    from vld.data.knowledge.biographies import make_biographies, read_fixed_rendering
    from vld.data.tokens import TokenSet
    from vld.eval.knowledge import bio_capacity
    from vld.train.curves import knowledge_curve_score

    data = make_biographies(30, 3, tmp_path / "bio", mode="fixed")
    token_set = TokenSet.open(data)
    rendering = read_fixed_rendering(token_set)
    model = tiny_model(vocab_size=token_set.vocab_size, max_seq_len=128).eval()
    point, = knowledge_curve_score(data, 128, 7, {"batch_size": 3})(EachModel(model))
    assert point == {"bio_capacity_bits_per_person": bio_capacity(model, data, 128, batch_size=3, limit=7)[
        "bio_capacity_bits_per_person"]}
    # counted here: people 0, 5, 10, 14, 19, 24, 29, each biography alone from its <bos>
    n0, s0 = token_set.meta["n_names"], token_set.meta["n_attribute_values"]
    bits = []
    for person in (0, 5, 10, 14, 19, 24, 29):
        a, b = rendering.index[person], rendering.index[person + 1]
        tokens = torch.as_tensor(np.asarray(rendering.tokens[a:b], dtype=np.int64))[None]
        with torch.no_grad():
            loss = -torch.log_softmax(model(tokens[:, :-1]).double(), -1).gather(-1, tokens[:, 1:, None])[0, :, 0]
        name, value = (torch.as_tensor(np.asarray(mask[a + 1:b], dtype=bool)) for mask in (rendering.name_mask,
                                                                                         rendering.value_mask))
        bits.append(math.log2(n0) - float(loss[name].sum()) / math.log(2)
                    + math.log2(s0) - float(loss[value].sum()) / math.log(2))
    assert point["bio_capacity_bits_per_person"] == pytest.approx(float(np.mean(bits)), rel=1e-9)


@pytest.fixture(scope="module")
def igsm_sets(tmp_path_factory):
    return igsm_train_and_test(tmp_path_factory.mktemp("igsm_curves"), 24, 9, test_op=2)


def scripted(test_dir, objective, right):
    """A model that answers problem i of the test set right when i is in `right`, else wrong,
    written as an `objective` model writes it."""
    import types

    from vld.data.igsm.tokenizer import EOS, IgsmTokenizer

    tokenizer = IgsmTokenizer.load(test_dir)
    script = {}
    for i, line in enumerate((test_dir / "problems.jsonl").read_text().splitlines()):
        p = json.loads(line)
        answer = str(p["answer"]) if i in right else str(int(p["answer"]) + 1)
        prompt = tokenizer.prompt_ids(p["problem"])
        script[tuple(prompt)] = (tokenizer.encode(answer) + [EOS] if objective == "answer_only"
                                 else tokenizer.sample_ids(p["problem"], p["solution"], answer)[len(prompt):])
    model = torch.nn.Module()
    model.config = types.SimpleNamespace(max_seq_len=1024)
    model.generate = lambda prompts, max_new_tokens, eos_id=None: [script[tuple(q)][:max_new_tokens] for q in prompts]
    return model


@pytest.mark.parametrize("objective", ["solution", "answer_only"])
def test_the_igsm_curve_is_answer_accuracy_on_the_first_problems(igsm_sets, objective):
    from vld.train.curves import igsm_curve_score

    test = igsm_sets["test"]
    score = igsm_curve_score({"op2": test, "again": test}, 5, objective, max_new_tokens=600, batch_size=2)
    # problems 5.. are never asked: getting them right changes nothing
    points = score(EachModel(scripted(test, objective, {0, 2, 7, 8}), scripted(test, objective, {0, 1, 2, 3, 4})))
    assert points == [{"answer_accuracy_again": 2 / 5, "answer_accuracy_op2": 2 / 5},
                      {"answer_accuracy_again": 1.0, "answer_accuracy_op2": 1.0}]


@pytest.mark.parametrize("objective", ["solution", "answer_only"])
@pytest.mark.parametrize("seeds", [(0,), (0, 1)], ids=["single", "stacked"])
def test_igsm_curves_leave_training_unchanged_and_score_the_evaluation(igsm_sets, tmp_path, seeds, objective):
    from vld.data.igsm.tokenizer import IgsmTokenizer
    from vld.eval.igsm import evaluate_igsm
    from vld.train.curves import igsm_curve_score
    from vld.train.datamodules import igsm_datamodule

    vocab = IgsmTokenizer.load(igsm_sets["train"]).vocab_size
    seq_len = 480 if objective == "answer_only" else 32  # answer_only: one problem per row
    score = igsm_curve_score({"op2": igsm_sets["test"]}, 5, objective, max_new_tokens=6, batch_size=2)
    dm = lambda c: igsm_datamodule(objective, igsm_sets["train"], seq_len, c.micro_batch_size, seed=c.seed)
    runs = [train_on(dm, score, tmp_path / name, seeds, every, vocab_size=vocab, max_seq_len=512)
            for name, every in (("off", 0), ("on", 2))]
    (plain, plain_metrics), (curved, metrics) = runs
    assert_same_training(plain, plain_metrics, curved, metrics)
    for i in range(len(seeds)):
        curve = metrics[i]["learning_curve"]
        final = evaluate_igsm(curved[i], igsm_sets["test"], max_new_tokens=6, batch_size=2, limit=5, objective=objective)
        assert set(curve) == {"steps", "answer_accuracy_op2"} and curve["answer_accuracy_op2"][-1] == final["answer_accuracy"]


def test_curve_settings_are_checked_per_family():
    from vld.pipeline import params as P

    raw = P.load_yaml(Path(__file__).resolve().parents[1] / "conf" / "profiles" / "tiny.yaml")
    for family in ("knowledge", "reasoning"):
        raw[family]["train"].update(curve_every=2, curve_sequences=3)
    pipeline = P.validate(raw, "params.yaml")
    for family in ("knowledge", "reasoning"):
        assert all(v.train.curve_every == 2 and v.train.curve_sequences == 3 for v in pipeline.variants[family].values())
    raw["retrofit"]["train"]["curve_every"] = 2
    with pytest.raises(UserError) as info:
        P.validate(raw, "params.yaml")
    assert str(info.value) == ("retrofit.variants.cycle_x1.train.curve_every: learning curves are measured for"
                               " reasoning, knowledge, khop variants only; remove it")


def test_the_families_score_their_data_with_their_evaluation_settings(igsm_sets, tmp_path, monkeypatch):
    import shutil

    from vld.data.knowledge.random_tokens import make_random_tokens
    from vld.eval.knowledge import all_knowledge_measures
    from vld.pipeline import params as P
    from vld.pipeline import paths
    from vld.pipeline.families import FAMILIES

    raw = P.load_yaml(Path(__file__).resolve().parents[1] / "conf" / "profiles" / "tiny.yaml")
    for family in ("knowledge", "reasoning"):
        raw[family]["train"].update(curve_every=2, curve_sequences=3)
    monkeypatch.chdir(tmp_path)
    make_random_tokens(1024, 16, 0, paths.knowledge_dir("rt1k"))  # the tiny profile's rt1k
    shutil.copytree(igsm_sets["test"], paths.IGSM_TESTS / "op2")
    pipeline = P.validate(raw, "params.yaml")
    variants = {family: pipeline.variants[family] for family in ("knowledge", "reasoning")}

    # knowledge: the evaluation's seq_len (the model's 64) on 3 of the 16 windows
    model = tiny_model(vocab_size=16, max_seq_len=64)
    point, = FAMILIES["knowledge"].curve_score(variants["knowledge"]["w16"], pipeline)(EachModel(model))
    measured = all_knowledge_measures(model, paths.knowledge_dir("rt1k"), 64, limit=3)
    # the first, a middle and the last window (which moves back and scores 63 new positions)
    assert measured["n_predicted"] == 64 + 64 + 63 and point == {k: measured[k] for k in point} and len(point) == 2
    # reasoning: the first 3 problems of op2, the variant's objective, eval.max_new_tokens 8
    test = paths.IGSM_TESTS / "op2"
    answer_only = FAMILIES["reasoning"].curve_score(variants["reasoning"]["answer_only"], pipeline)
    assert answer_only(EachModel(scripted(test, "answer_only", {0, 2, 5}))) == [{"answer_accuracy_op2": 2 / 3}]
    solution = FAMILIES["reasoning"].curve_score(variants["reasoning"]["base"], pipeline)
    assert solution(EachModel(scripted(test, "solution", {0, 1, 2}))) == [{"answer_accuracy_op2": 0.0}]  # cut at 8 tokens
