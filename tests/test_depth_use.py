"""Causal ablations, early exit (vld.eval.depth_use), the regime rule and the depth law
(vld.depth_rules, vld.stats)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vld import depth_rules as rules
from vld import stats
from vld.errors import UserError
from vld.eval import depth_use as du
from vld.model import ModelConfig, VLDTransformer
from vld.model.step import run_visits

VOCAB = 11


def sequence_loss(logits, batch):
    """Per-sequence mean next-token cross-entropy (the score every test uses)."""
    tokens = batch["tokens"] if isinstance(batch, dict) else batch
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                           tokens[:, 1:].reshape(-1), reduction="none")
    return loss.view(tokens.shape[0], -1).mean(-1)


class Affine(nn.Module):
    """A stand-in block: x -> scale * x + vector (same signature as vld's Block)."""

    def __init__(self, scale: float, vector):
        super().__init__()
        self.scale = scale
        self.register_buffer("vector", torch.as_tensor(vector, dtype=torch.float32))

    def forward(self, x, rope=None, attn_mask=None, is_causal=False, cache=None, slot=0):
        return self.scale * x + self.vector

    def apply(self, x):  # the closed form, for the tests
        return self.scale * x + self.vector


def affine_model(schedule, maps, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=VOCAB, n_layer=len(maps), d_model=4, n_head=1,
                         max_seq_len=16, schedule=schedule).validate()
    model = VLDTransformer(config)
    model.layers = nn.ModuleList(Affine(s, v) for s, v in maps)
    with torch.no_grad():  # small dyadic values: the affine arithmetic is exact in float32
        model.tok_emb.weight.copy_(torch.randint(-4, 5, model.tok_emb.weight.shape) / 4)
        model.pos_emb.weight.copy_(torch.randint(-4, 5, model.pos_emb.weight.shape) / 4)
    return model


MAPS = [(1.0, [1.0, 0.0, -1.0, 0.5]),   # base 0: input-independent update (+ v0)
        (2.0, [0.0, -0.5, 0.25, 1.0]),  # base 1: 2x + v1
        (0.5, [-1.0, 1.0, 0.0, 0.0])]   # base 2: x/2 + v2
SCHEDULE = [0, 1, 0, 2, 1]


def tokens_batch(n=6, length=9, seed=3):
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


def embedded(model, tokens):
    return model.tok_emb(tokens) + model.pos_emb(torch.arange(tokens.shape[1])).unsqueeze(0)


def closed_form_loss(model, tokens, order, replace=None):
    """Loss with the maps of `order` composed by hand; replace {step: added vector}."""
    with torch.no_grad():
        x = embedded(model, tokens)
        for step, index in enumerate(order):
            if replace and step in replace:
                x = x + replace[step]
            else:
                x = MAPS_MODULES[index].apply(x)
        return sequence_loss(model.lm_head(model.norm_f(x)), tokens)


MAPS_MODULES = [Affine(s, v) for s, v in MAPS]


def by_label(result):
    return {a["label"]: a for a in result["ablations"]}


def test_skip_and_swap_deltas_equal_their_closed_forms():
    model = affine_model(SCHEDULE, MAPS)
    tokens = tokens_batch()
    result = du.depth_use(model, [tokens[:4], tokens[4:]], sequence_loss, max_sequences=None)
    intact = closed_form_loss(model, tokens, SCHEDULE)
    assert result["intact"]["loss"]["mean"] == pytest.approx(float(intact.double().mean()), abs=1e-6)
    ablations = by_label(result)
    for i in range(len(SCHEDULE)):
        order = SCHEDULE[:i] + SCHEDULE[i + 1:]
        expected = closed_form_loss(model, tokens, order) - intact
        got = ablations[f"skip {i}"]["delta"]["loss"]
        assert got["mean"] == pytest.approx(float(expected.double().mean()), abs=1e-6)
        assert got["n"] == 6 and got["low"] <= got["mean"] <= got["high"]
    for i in range(len(SCHEDULE) - 1):
        order = list(SCHEDULE)
        order[i], order[i + 1] = order[i + 1], order[i]
        expected = closed_form_loss(model, tokens, order) - intact
        assert ablations[f"swap {i}-{i + 1}"]["delta"]["loss"]["mean"] == pytest.approx(
            float(expected.double().mean()), abs=1e-6)
    # Swapping two maps that do not commute (2x + v1 after x + v0) changes the loss.
    assert abs(ablations["swap 0-1"]["delta"]["loss"]["mean"]) > 1e-3


def test_revisit_replacement_closed_forms():
    model = affine_model(SCHEDULE, MAPS)
    tokens = tokens_batch()
    result = du.depth_use(model, [tokens], sequence_loss)
    ablations = by_label(result)
    assert set(ablations) >= {"revisit 2 <- 0", "revisit 4 <- 1"}
    assert not any(a["kind"] == "revisit_all" for a in result["ablations"])  # two visits each
    # Base 0 adds v0 whatever its input: re-adding the first visit's update is the layer itself.
    same = ablations["revisit 2 <- 0"]
    assert same["delta"]["loss"]["mean"] == 0.0 and same["value"]["loss"] == pytest.approx(
        result["intact"]["loss"]["mean"], abs=0)
    # Base 1 (2x + v1) at virtual layer 4 is replaced by its first update h_1 + v1 (h_1 = h_0 + v0).
    with torch.no_grad():
        h1 = MAPS_MODULES[0].apply(embedded(model, tokens))
        first_update = MAPS_MODULES[1].apply(h1) - h1
    expected = (closed_form_loss(model, tokens, SCHEDULE, replace={4: first_update})
                - closed_form_loss(model, tokens, SCHEDULE))
    assert ablations["revisit 4 <- 1"]["delta"]["loss"]["mean"] == pytest.approx(
        float(expected.double().mean()), abs=1e-6)


def test_revisit_all_replaces_every_later_visit():
    maps = [(2.0, [0.5, 0.0, 0.0, -0.5])]
    model = affine_model([0, 0, 0], maps)
    tokens = tokens_batch(n=3)
    result = du.depth_use(model, [tokens], sequence_loss)
    every = [a for a in result["ablations"] if a["kind"] == "revisit_all"]
    assert len(every) == 1 and every[0]["virtual_layers"] == [1, 2]
    with torch.no_grad():
        h0 = embedded(model, tokens)
        update = (2.0 * h0 + torch.tensor(maps[0][1])) - h0  # the first visit's update
        x = h0 + 3 * update  # one real visit, then the same update twice more
        expected = sequence_loss(model.lm_head(model.norm_f(x)), tokens)
    assert every[0]["value"]["loss"] == pytest.approx(float(expected.double().mean()), abs=1e-6)


def test_skipping_every_layer_is_the_embedding_only_model():
    model = affine_model(SCHEDULE, MAPS)
    tokens = tokens_batch()
    result = du.depth_use(model, [tokens], sequence_loss)
    with torch.no_grad():
        embedding_only = sequence_loss(model.lm_head(model.norm_f(embedded(model, tokens))), tokens)
    assert result["early_exit"][0]["layers_run"] == 0
    assert result["early_exit"][0]["value"]["loss"]["mean"] == pytest.approx(
        float(embedding_only.double().mean()), abs=1e-6)
    # The same through skips: a one-layer model's only skip leaves the embeddings.
    one = affine_model([0], MAPS[:1])
    single = du.depth_use(one, [tokens], sequence_loss)
    with torch.no_grad():
        alone = sequence_loss(one.lm_head(one.norm_f(embedded(one, tokens))), tokens)
    assert by_label(single)["skip 0"]["value"]["loss"] == pytest.approx(
        float(alone.double().mean()), abs=1e-6)


def real_model(block="gpt2", schedule=(0, 1, 0, 1), seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=VOCAB, n_layer=2, d_model=16, n_head=2, max_seq_len=16,
                         block=block, schedule=list(schedule)).validate()
    return VLDTransformer(config).eval()


@pytest.mark.parametrize("block", ["gpt2", "llama"])
def test_early_exit_at_the_last_layer_is_the_model_output_exactly(block):
    model = real_model(block)
    tokens = tokens_batch()
    exits = du.early_exit_logits(model, tokens)
    with torch.no_grad():
        assert torch.equal(exits[-1], model(tokens))
    assert len(exits) == model.effective_depth + 1
    result = du.depth_use(model, [tokens], sequence_loss)
    last = result["early_exit"][-1]
    assert last["layers_run"] == 4 and last["virtual_layer"] == 3 and last["visit"] == 1
    assert last["value"]["loss"] == result["intact"]["loss"]
    with torch.no_grad():
        own = sequence_loss(model(tokens), tokens).double().numpy()
        lens1 = sequence_loss(exits[1], tokens).double().numpy()
    assert result["intact"]["loss"]["mean"] == float(own.mean())
    assert result["early_exit"][1]["value"]["loss"]["mean"] == pytest.approx(float(lens1.mean()), rel=1e-12)
    # Every layer skipped: the embedding-only model (embeddings -> final norm -> head).
    with torch.no_grad():
        x = model.tok_emb(tokens)
        if model.pos_emb is not None:
            x = x + model.pos_emb(torch.arange(tokens.shape[1]))
        embedding_only = sequence_loss(model.lm_head(model.norm_f(x)), tokens).double().mean()
    assert result["early_exit"][0]["value"]["loss"]["mean"] == pytest.approx(float(embedding_only), rel=1e-9)


@pytest.mark.parametrize("block", ["gpt2", "llama"])
def test_rerunning_the_blocks_reproduces_the_forward_and_skips_match_a_shorter_schedule(block):
    model = real_model(block)
    tokens = tokens_batch()
    mask = torch.ones_like(tokens)
    mask[:2, :3] = 0  # left padding on two rows
    for attention_mask in (None, mask):
        with torch.no_grad():
            logits, hidden = model(tokens, attention_mask=attention_mask, return_hidden=True)
            inputs = model.prepare(tokens, attention_mask=attention_mask)
            again = run_visits(model, inputs, hidden[0], range(model.effective_depth))
        assert torch.equal(model.readout(again), logits)
    result = du.depth_use(model, [tokens], sequence_loss)
    # Independent: the model itself with virtual layer 2 removed / layers 1 and 2 swapped.
    for label, order in (("skip 2", [0, 1, 1]), ("swap 1-2", [0, 0, 1, 1]), ("skip 0", [1, 0, 1])):
        other = copy.deepcopy(model)
        other.set_schedule(order)
        with torch.no_grad():
            expected = sequence_loss(other(tokens), tokens).double().mean()
        assert by_label(result)[label]["value"]["loss"] == pytest.approx(float(expected), abs=1e-6)


def test_metrics_with_gaps_max_sequences_determinism_and_cost():
    model = real_model()
    tokens = tokens_batch(n=10)

    def two_metrics(logits, batch):
        loss = sequence_loss(logits, batch)
        odd = torch.where(batch["group"] % 2 == 1, loss, torch.full_like(loss, math.nan))
        return {"loss": loss, "loss_odd": odd}

    batches = [{"tokens": tokens[:4], "group": torch.arange(4)},
               {"tokens": tokens[4:], "group": torch.arange(4, 10)}]
    result = du.depth_use(model, batches, two_metrics, max_sequences=7, seed=5)
    assert result["sequences"] == 7 and result["metrics"] == ["loss", "loss_odd"]
    assert result["intact"]["loss"]["n"] == 7 and result["intact"]["loss_odd"]["n"] == 3
    with torch.no_grad():
        own = sequence_loss(model(tokens[:7]), tokens[:7]).double().numpy()
    assert result["intact"]["loss"]["mean"] == pytest.approx(float(own.mean()), rel=1e-12)
    assert result["intact"]["loss_odd"]["mean"] == pytest.approx(float(own[1::2].mean()), rel=1e-12)
    again = du.depth_use(model, batches, two_metrics, max_sequences=7, seed=5)
    assert again == result
    other_seed = du.depth_use(model, batches, two_metrics, max_sequences=7, seed=6)
    assert other_seed["ablations"][0]["delta"]["loss"]["mean"] == result["ablations"][0]["delta"]["loss"]["mean"]
    assert other_seed["ablations"][0]["delta"]["loss"]["low"] != result["ablations"][0]["delta"]["loss"]["low"]
    # Layer runs: intact 4 per batch; skips 3+2+1+0, swaps 4+3+2, revisits 1+0 per batch.
    assert result["cost"]["layer_runs_intact"] == 8
    assert result["cost"]["layer_runs_ablations"] == 2 * (6 + 9 + 1)
    assert "seconds" not in result["cost"]
    json_ready = __import__("json").dumps(result)
    assert "NaN" not in json_ready


def test_bad_arguments_are_user_errors():
    model = real_model()
    with pytest.raises(UserError, match="depth_use.max_sequences"):
        du.depth_use(model, [tokens_batch()], sequence_loss, max_sequences=0)
    with pytest.raises(UserError, match="depth_use.batches"):
        du.depth_use(model, [], sequence_loss)
    with pytest.raises(UserError, match="depth_use.kinds"):
        du.depth_use(model, [tokens_batch()], sequence_loss, kinds=("skip", "drop"))
    only = du.depth_use(model, [tokens_batch()], sequence_loss, kinds=("skip",), early_exit=False)
    assert {a["kind"] for a in only["ablations"]} == {"skip"} and only["early_exit"] == []
    assert only["cost"]["layer_runs_ablations"] == 3 + 2 + 1 + 0
    timed = du.depth_use(model, [tokens_batch()], sequence_loss, measure_time=True)
    assert set(timed["cost"]["seconds"]) == {"intact", "ablations", "early_exit"}
    with pytest.raises(UserError, match="depth_use.batches"):
        du.depth_use(model, [{"labels": tokens_batch()}], sequence_loss)
    with pytest.raises(UserError, match="depth_use.batches"):
        du.depth_use(model, [[1, 2, 3]], sequence_loss, max_sequences=None)


# ---------------------------------------------------------------- regime rule

def delta_table(skips, swaps, intact=1.0, chance=3.0, width=0.05, schedule=None):
    """A hand-made depth_use result: skip i / swap i-(i+1) mean costs with +-width intervals,
    on `schedule` (default: distinct base layers, so every ablation is its own operation)."""
    def cell(mean):
        return {"mean": mean, "low": mean - width, "high": mean + width, "n": 100}

    ablations = [{"kind": "skip", "virtual_layers": [i], "delta": {"loss": cell(m)}} for i, m in enumerate(skips)]
    ablations += [{"kind": "swap", "virtual_layers": [i, i + 1], "delta": {"loss": cell(m)}}
                  for i, m in enumerate(swaps)]
    schedule = list(range(max(len(skips), len(swaps) + 1))) if schedule is None else schedule
    return {"schedule": schedule, "intact": {"loss": cell(intact)}, "chance": {"loss": chance},
            "ablations": ablations}


def test_regime_rule_gives_each_verdict():
    # Gain over chance 2.0: a share of 0.25 is 0.5 nats.
    compositional = rules.regime(delta_table(skips=[0.1, 1.5, 0.2], swaps=[0.8, 1.2]))
    assert compositional["verdict"] == rules.COMPOSITIONAL
    assert compositional["skip_max_share"] == pytest.approx(0.75)
    assert rules.regime(delta_table(skips=[0.1, 0.12, 0.08, 0.11], swaps=[0.05]))["verdict"] == rules.ENSEMBLE
    # A costly skip but cheap swaps: not shown; uneven small skips: not shown.
    assert rules.regime(delta_table(skips=[0.1, 1.5, 0.2], swaps=[0.05, 0.1]))["verdict"] == rules.NOT_SHOWN
    assert rules.regime(delta_table(skips=[0.0, 0.4, 0.0], swaps=[0.5]))["verdict"] == rules.NOT_SHOWN
    # A skip whose interval reaches the threshold is neither small enough nor clearly large.
    assert rules.regime(delta_table(skips=[0.48, 0.48], swaps=[1.0], width=0.05))["verdict"] == rules.NOT_SHOWN
    # No better than chance, no chance level, no swap at all.
    assert rules.regime(delta_table(skips=[1.0], swaps=[2.0], intact=3.0))["verdict"] == rules.NOT_SHOWN
    assert rules.regime(delta_table(skips=[1.0], swaps=[2.0]), "loss", None)["verdict"] == rules.COMPOSITIONAL
    no_chance = delta_table(skips=[1.0], swaps=[2.0])
    no_chance["chance"] = {}
    assert rules.regime(no_chance)["verdict"] == rules.NOT_SHOWN
    assert rules.regime(delta_table(skips=[1.5], swaps=[]))["verdict"] == rules.NOT_SHOWN
    assert rules.regime(delta_table(skips=[1.5], swaps=[]), chance=3.0)["why"]


def test_regime_counts_each_distinct_operation_once():
    # sequence x1 on 2 layers: schedule 0 0 1 1. Swaps 0-1 and 2-3 exchange a layer with itself
    # (the intact order: zero by construction); skip 0 = skip 1 and skip 2 = skip 3.
    schedule = [0, 0, 1, 1]
    distinct = rules.distinct_ablations(schedule, du.ablations(schedule))
    assert [a["label"] for a in distinct if a["kind"] in ("skip", "swap")] == ["skip 0", "skip 2", "swap 1-2"]
    # Gain over chance 2.0. Counted once each, the skips are 0.2 and 1.0 (median 0.6) and the
    # one real swap costs 0.8: compositional. Counting the zero self-swaps (median swap 0.0)
    # and the repeated skips would give not shown.
    table = delta_table(skips=[0.2, 0.2, 1.0, 1.0], swaps=[0.0, 0.8, 0.0], schedule=schedule)
    got = rules.regime(table)
    assert got["verdict"] == rules.COMPOSITIONAL
    assert (got["skip_median"], got["swap_median"]) == (pytest.approx(0.6), pytest.approx(0.8))
    # The same costs on four distinct layers (every ablation its own operation): not shown.
    assert rules.regime(delta_table(skips=[0.2, 0.2, 1.0, 1.0], swaps=[0.0, 0.8, 0.0]))["verdict"] == rules.NOT_SHOWN
    # A duplicated skip counts once in the median: skips 0.1 (x2 as one), 0.9 and 1.0 -> 0.9.
    assert rules.regime(delta_table(skips=[0.1, 0.1, 0.9, 1.0], swaps=[2.0, 2.0, 2.0],
                                 schedule=[0, 0, 1, 2]))["skip_median"] == pytest.approx(0.9)


def test_depth_use_result_carries_a_regime_per_metric():
    model = affine_model(SCHEDULE, MAPS)
    result = du.depth_use(model, [tokens_batch()], sequence_loss, chance={"loss": math.log(VOCAB)})
    assert result["regime"]["loss"]["verdict"] in rules.VERDICTS
    assert result["regime"]["loss"] == rules.regime(result, "loss")


# ---------------------------------------------------------------- depth law

def test_fit_recovers_a_known_law():
    depth = np.array([1, 2, 3, 4, 6, 8, 12, 16])
    loss = 2.5 * depth ** -0.9 + 1.3
    fit = stats.fit_power_law(depth, loss)
    assert fit["a"] == pytest.approx(0.9, abs=1e-6)
    assert fit["L0"] == pytest.approx(1.3, abs=1e-6) and fit["c"] == pytest.approx(2.5, abs=1e-5)
    assert fit["sse"] < 1e-12 and not fit["a_at_bound"]
    assert stats.fit_power_law([1, 2, 2], [3.0, 2.0, 2.1]) is None


def test_fit_intervals_from_seeds_and_from_the_covariance():
    rng = np.random.default_rng(0)
    points = [{"depth": d, "loss": 2.0 * d ** -1.1 + 0.8 + rng.normal(0, 0.01), "seed": s,
               "tied": False} for s in range(4) for d in (1, 2, 4, 8, 16)]
    fit = stats.fit_with_interval(points)
    assert fit["interval_method"] == "seed bootstrap" and fit["seeds"] == 4
    low, high = fit["interval"]["a"]
    assert low <= 1.1 <= high and high - low < 0.5
    low, high = fit["interval"]["L0"]
    assert low <= 0.8 <= high
    one_seed = stats.fit_with_interval([p for p in points if p["seed"] == 0])
    assert one_seed["interval_method"] == "fit covariance"
    assert one_seed["interval"]["a"][0] < one_seed["a"] < one_seed["interval"]["a"][1]
    three = stats.fit_with_interval([p for p in points if p["seed"] == 0 and p["depth"] <= 4])
    assert three["interval_method"] == "none" and three["interval"] is None


def law_points(tied_loss_of, seeds=(0, 1, 2), noise=0.005):
    rng = np.random.default_rng(1)
    native = lambda d: 2.0 / d + 1.0
    points = []
    for s in seeds:
        for d in (2, 4, 6, 8):
            points.append({"depth": d, "loss": native(d) + rng.normal(0, noise), "seed": s,
                           "tied": False})
        for d in (4, 6, 8):
            points.append({"depth": d, "loss": tied_loss_of(native, d) + rng.normal(0, noise),
                           "seed": s, "tied": True, "base_depth": 2})
    return points


def test_tied_share_verdicts():
    same = rules.depth_law(law_points(lambda native, d: native(d)))
    assert same["tied_share"]["verdict"] == rules.AS_MUCH
    assert same["tied_share"]["compared_depths"] == [4, 6, 8]
    lo, hi = same["tied_share"]["interval"]
    assert lo <= 1.0 <= hi
    assert same["native"]["a"] == pytest.approx(1.0, abs=0.2)
    assert same["tied"]["n"] == 3 * 3 + 3  # tied points and the base model's seeds
    half = rules.depth_law(law_points(lambda native, d: native(2) - 0.5 * (native(2) - native(d))))
    assert half["tied_share"]["verdict"] == rules.LESS
    assert half["tied_share"]["share"] == pytest.approx(0.5, abs=0.05)
    flat = rules.depth_law(law_points(lambda native, d: native(2)))
    assert flat["tied_share"]["verdict"] == rules.NOTHING
    noisy = rules.depth_law(law_points(lambda native, d: native(2) - 0.5 * (native(2) - native(d)),
                                    noise=0.5))
    assert noisy["tied_share"]["verdict"] == rules.NOT_SHOWN
    single = rules.depth_law(law_points(lambda native, d: native(d), seeds=(0,)))
    assert single["tied_share"]["interval"] is None and single["tied_share"]["verdict"] == rules.AS_MUCH
    unmatched = rules.depth_law([p for p in law_points(lambda n, d: n(d)) if p["tied"] or p["depth"] == 2])
    assert unmatched["tied_share"]["verdict"] == rules.NOT_SHOWN
    with pytest.raises(UserError, match="base_depth"):
        rules.depth_law([{"depth": 2, "loss": 1.0, "tied": True}])


def test_tied_share_does_not_take_patterns_of_one_depth_for_seeds():
    # One seed per variant: base 2 layers, native 4 layers, cycle x1 and sequence x1 (depth 4).
    losses = {"base": 2.0, "native": 1.0, "cycle": 1.2, "sequence": 1.6}
    points = [{"depth": 2, "loss": losses["base"], "seed": 0, "tied": False, "pattern": "base"},
              {"depth": 4, "loss": losses["native"], "seed": 0, "tied": False, "pattern": "base"},
              {"depth": 4, "loss": losses["cycle"], "seed": 0, "tied": True, "base_depth": 2, "pattern": "cycle"},
              {"depth": 4, "loss": losses["sequence"], "seed": 0, "tied": True, "base_depth": 2,
               "pattern": "sequence"}]
    share = rules.tied_share(points)
    # Each pattern is its own tied model: S = ((2 - 1.2) + (2 - 1.6)) / (2 * (2 - 1)) = 0.6,
    # with no interval (one seed per model), not the spread between the two patterns.
    assert share["share"] == pytest.approx(0.6) and share["interval"] is None
    assert share["verdict"] == rules.LESS and share["compared_depths"] == [4]
    # Three seeds of each: an interval from seeds alone, still one model per pattern.
    seeds = [dict(p, seed=s, loss=p["loss"] + 0.01 * s) for p in points for s in range(3)]
    low, high = rules.tied_share(seeds)["interval"]
    assert low <= rules.tied_share(seeds)["share"] <= high and high - low < 0.1


# ---------------------------------------------------------------- report pieces

def test_report_tables_and_figures(tmp_path):
    from vld.report import depth_use as report

    results = []
    for name, schedule, maps in (("base", [0, 1], MAPS[:2]), ("cycle x1", [0, 1, 0, 1], MAPS[:2])):
        use = du.depth_use(affine_model(schedule, maps), [tokens_batch()], sequence_loss,
                           chance={"loss": math.log(VOCAB)})
        results.append({"variant": name, "kind": "knowledge", "depth_use": use})
    results.append({"variant": "no depth use", "kind": "knowledge"})
    table = report.depth_use_table(results)
    assert table.name == "depth_use"
    # intact + 2 skips + 1 swap; intact + 4 skips + 3 swaps + 2 revisits.
    assert len(table.rows) == 4 + 10
    cycle = {row[2]: row for row in table.rows if row[0] == "cycle x1"}
    skip = results[1]["depth_use"]["ablations"][0]["delta"]["loss"]
    assert cycle["skip 0"][5] == f"{skip['mean']:+.3f} [{skip['low']:.3f}, {skip['high']:.3f}]"
    assert "revisit 2 <- 0" in cycle and cycle["revisit 2 <- 0"][5].startswith("+0.000")
    exits = report.early_exit_table(results)
    assert [row[2] for row in exits.rows] == [0, 1, 2, 0, 1, 2, 3, 4]
    regimes = report.regime_table(results)
    assert [row[3] for row in regimes.rows] == [r["depth_use"]["regime"]["loss"]["verdict"] for r in results[:2]]
    assert report.regime_lines(results)[0].startswith("knowledge: base (loss): ")
    # Several seeds of one variant: every table names the seed, so its rows are told apart; a
    # variant with one seed keeps its plain name.
    seeded = [dict(results[0], seed=1), dict(results[0], seed=0), dict(results[1], seed=0)]
    assert [row[0] for row in report.regime_table(seeded).rows] == ["base seed 0", "base seed 1", "cycle x1"]
    assert {row[0] for row in report.depth_use_table(seeded).rows} == {"base seed 0", "base seed 1", "cycle x1"}
    assert [row[0] for row in report.early_exit_table(seeded).rows][:6] == ["base seed 0"] * 3 + ["base seed 1"] * 3
    assert report.regime_lines(seeded)[0].startswith("knowledge: base seed 0 (loss): ")
    law = rules.depth_law(law_points(lambda native, d: native(d)))
    law_table = report.depth_law_table({"knowledge loss": law})
    assert [row[1] for row in law_table.rows] == ["native", "tied", "tied / native gain"]
    assert law_table.rows[-1][-1] == rules.AS_MUCH
    for path in (report.depth_use_figure(results, tmp_path / "use.png"),
                 report.early_exit_figure(results, tmp_path / "exit.png"),
                 report.depth_law_figure(law, tmp_path / "law.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Nothing to show: None, and no file.
    assert report.depth_use_table([]) is None and report.early_exit_table(results[2:]) is None
    assert report.regime_table([]) is None and report.depth_law_table({}) is None
    assert report.depth_use_figure(results, tmp_path / "x.png", metric="error") is None
    assert report.early_exit_figure([], tmp_path / "y.png") is None
    assert report.depth_law_figure(None, tmp_path / "z.png") is None
    assert not any((tmp_path / n).exists() for n in ("x.png", "y.png", "z.png"))


def test_depth_law_points_from_variant_results():
    from vld.report import depth_use as report

    results = [{"variant": "base", "pattern": "base", "effective_depth": 2, "n_layer": 2,
                "native_depth": True, "seed": 0, "loss": 2.0},
               {"variant": "cycle x1", "pattern": "cycle", "effective_depth": 4, "n_layer": 2,
                "native_depth": False, "seed": 0, "loss": 1.8},
               {"variant": "native 4", "pattern": "base", "effective_depth": 4, "n_layer": 4,
                "native_depth": True, "seed": 0, "loss": 1.5},
               {"variant": "unmeasured", "pattern": "cycle", "effective_depth": 6, "n_layer": 2,
                "native_depth": False, "seed": 0, "loss": None}]
    points = report.depth_law_points(results, lambda r: r["loss"])
    assert [(p["variant"], p["depth"], p["tied"], p.get("base_depth"), p["pattern"]) for p in points] == [
        ("base", 2, False, None, "base"), ("cycle x1", 4, True, 2, "cycle"), ("native 4", 4, False, None, "base")]
    share = rules.depth_law(points)["tied_share"]
    assert share["share"] == pytest.approx((2.0 - 1.8) / (2.0 - 1.5))
    assert share["verdict"] == rules.LESS and share["interval"] is None


def test_fit_finds_a_steep_law_inside_the_grid():
    # a native k-hop curve at hops 0-4 falls to zero within a few layers: a steep exponent
    depth = np.array([2, 3, 4, 6, 8])
    loss = 40.0 * depth.astype(float) ** -6.5 + 0.01
    fit = stats.fit_power_law(depth, loss)
    assert fit["a"] == pytest.approx(6.5, abs=1e-4) and not fit["a_at_bound"]
    assert fit["L0"] == pytest.approx(0.01, abs=1e-6)


def test_depth_laws_per_loop_recipe():
    from vld.report import depth_use as report

    def result(variant, pattern, n_layer, depth, seed, error, recipe=None):
        r = {"family": "khop", "variant": variant, "pattern": pattern, "n_layer": n_layer, "layers": None,
             "effective_depth": depth, "native_depth": pattern == "base", "seed": seed, "d_model": 96,
             "train_steps": 1500, "khop": {"hops": {"1": {"error": 0.0}, "2": {"error": error}}}}
        return dict(r, recipe=recipe) if recipe else r

    looped = {"inject": "adapter", "residual_scale": "visits"}
    results = []
    for seed in range(3):
        results += [result("native2", "base", 2, 2, seed, 0.30 + 0.01 * seed),
                    result("native3", "base", 3, 3, seed, 0.12 + 0.01 * seed),
                    result("native4", "base", 4, 4, seed, 0.05 + 0.01 * seed),
                    result("cycle_x1", "cycle", 2, 4, seed, 0.20 + 0.01 * seed),
                    result("cycle_x2", "cycle", 2, 6, seed, 0.15 + 0.01 * seed),
                    result("looped_x1", "cycle", 2, 4, seed, 0.10 + 0.01 * seed, looped)]
    laws = report.profile_depth_laws(results)
    plain, with_recipe = "khop: error, k >= 2", "khop: error, k >= 2, recipe inject=adapter, residual_scale=visits"
    assert {plain, with_recipe} <= set(laws)
    tied_variants = lambda law: sorted({p["variant"] for p in law["points"] if p["tied"]})
    assert tied_variants(laws[plain]) == ["cycle_x1", "cycle_x2"]
    assert tied_variants(laws[with_recipe]) == ["looped_x1"]
    natives = lambda law: sorted({p["variant"] for p in law["points"] if not p["tied"]})
    assert natives(laws[plain]) == natives(laws[with_recipe]) == ["native2", "native3", "native4"]
    # the tied / native gain at depth 4, independently: (base - tied) / (base - native), seed means
    base, native4 = 0.31, 0.06
    assert laws[plain]["tied_share"]["share"] == pytest.approx((base - 0.21) / (base - native4))
    assert laws[with_recipe]["tied_share"]["share"] == pytest.approx((base - 0.11) / (base - native4))


class LinearBlock(nn.Module):
    """A stand-in block: x -> x @ W^T + b."""

    def __init__(self, weight, bias):
        super().__init__()
        self.register_buffer("weight", torch.as_tensor(weight, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, x, rope=None, attn_mask=None, is_causal=False, cache=None, slot=0):
        return x @ self.weight.T + self.bias


def logits_are_states_model(blocks, schedule):
    """A model whose logits are the residual state itself (zero embeddings, no final norm,
    identity head), so a block's effect on the loss is known in closed form."""
    width = 5
    config = ModelConfig(vocab_size=width, n_layer=len(blocks), d_model=width, n_head=1,
                         max_seq_len=8, schedule=schedule, tie_embeddings=False).validate()
    model = VLDTransformer(config)
    model.layers = nn.ModuleList(blocks)
    model.norm_f = nn.Identity()
    with torch.no_grad():
        model.tok_emb.weight.zero_()
        model.pos_emb.weight.zero_()
        model.lm_head.weight.copy_(torch.eye(width))
    return model


def class_zero_loss(logits, batch):
    return F.cross_entropy(logits[:, -1], torch.zeros(logits.shape[0], dtype=torch.long),
                           reduction="none")


def test_regime_of_a_composing_and_an_averaging_model_end_to_end():
    eye = torch.eye(5)
    tokens = tokens_batch(n=4, length=6) % 5
    chance = {"loss": math.log(5)}
    # Composition: A writes feature 1; B reads feature 1 and writes the answer (feature 0).
    write = LinearBlock(eye, 4 * eye[1])
    read = eye.clone()
    read[0, 1], read[1, 1] = 2.0, 0.0
    composing = logits_are_states_model([write, LinearBlock(read, torch.zeros(5))], None)
    result = du.depth_use(composing, [tokens], class_zero_loss, chance=chance)
    final = torch.tensor([8.0, 0, 0, 0, 0])
    intact = float(F.cross_entropy(final[None], torch.tensor([0])))
    assert result["intact"]["loss"]["mean"] == pytest.approx(intact, abs=1e-6)
    skips = {a["label"]: a["delta"]["loss"]["mean"] for a in result["ablations"]}
    wrong = float(F.cross_entropy(4 * eye[1][None], torch.tensor([0])))  # only feature 1
    assert skips["skip 0"] == pytest.approx(math.log(5) - intact, abs=1e-6)  # B(0) = 0
    assert skips["skip 1"] == pytest.approx(wrong - intact, abs=1e-6)
    assert skips["swap 0-1"] == pytest.approx(wrong - intact, abs=1e-6)  # A(B(0)) = 4 e1
    assert result["regime"]["loss"]["verdict"] == rules.COMPOSITIONAL
    # Averaging: eight visits of one layer, each adding the same small step toward the answer.
    step = LinearBlock(eye, eye[0])
    averaging = logits_are_states_model([step], [0] * 8)
    result = du.depth_use(averaging, [tokens], class_zero_loss, chance=chance)
    costs = [a["delta"]["loss"]["mean"] for a in result["ablations"] if a["kind"] == "skip"]
    seven = float(F.cross_entropy(7 * eye[0][None], torch.tensor([0])))
    eight = float(F.cross_entropy(8 * eye[0][None], torch.tensor([0])))
    assert costs == pytest.approx([seven - eight] * 8, abs=1e-6)
    assert result["regime"]["loss"]["verdict"] == rules.ENSEMBLE
    # Its revisits re-add the same step: replacing any of them changes nothing.
    assert all(abs(a["delta"]["loss"]["mean"]) < 1e-6 for a in result["ablations"]
               if a["kind"] in ("revisit", "revisit_all"))
