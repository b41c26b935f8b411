"""Knowledge-capacity measures against oracle predictors with known answers.

Oracles are tiny nn.Modules (vld.model is not needed): uniform, perfect (probability 1 on the
true next token), confidently wrong, and for biographies perfect / uniform-over-names.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from vld.data.knowledge.biographies import BioLists, BiographyRenderer, EOS_ID, make_biographies
from vld.data.knowledge.random_tokens import make_random_tokens
from vld.data.tokens import TokenSet
from vld.errors import UserError
from vld.eval.knowledge import (
    all_knowledge_measures,
    bio_capacity,
    count_parameters,
    cross_entropy_capacity,
    entropy_capacity,
    eval_windows,
    part33_capacity_bits,
    token_stats,
)

K, N, SEQ = 3001, 97, 64


@pytest.fixture(scope="module")
def random_set(tmp_path_factory):
    return TokenSet.open(make_random_tokens(K, N, 5, tmp_path_factory.mktemp("rt") / "data"))


class Uniform(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, tokens):
        return self.bias.expand(*tokens.shape, -1)


class SequenceOracle(nn.Module):
    """Knows the whole sequence: finds each input window in it and predicts the next tokens.

    shift=0: probability 1 on the true token; shift=s: on (true + s) mod n, i.e. confidently
    wrong. margin=None puts -inf on every other token; a number M gives logit M to the
    predicted token and 0 to the others."""

    def __init__(self, sequence, n, window, shift=0, margin=None):
        super().__init__()
        self.n, self.shift, self.margin = n, shift, margin
        self.sequence = torch.as_tensor(np.asarray(sequence, dtype=np.int64))
        seq = np.asarray(sequence, dtype=np.int64)
        self.where = {seq[s : s + window].tobytes(): s for s in range(len(seq) - window + 1)}
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, tokens):
        B, T = tokens.shape
        starts = [self.where[row.numpy().astype(np.int64).tobytes()] for row in tokens]
        nxt = torch.stack([self.sequence[s + 1 : s + 1 + T] for s in starts])
        predicted = (nxt + self.shift) % self.n
        if self.margin is None:
            logits = torch.full((B, T, self.n), -math.inf)
            return logits.scatter(2, predicted[..., None], 0.0) * self.scale
        logits = torch.zeros((B, T, self.n))
        return logits.scatter(2, predicted[..., None], float(self.margin)) * self.scale


class TinyLM(nn.Module):
    def __init__(self, n, d=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(n, d)
        self.mix = nn.Linear(d, d)
        self.head = nn.Linear(d, n)

    def forward(self, tokens):
        h = self.emb(tokens)
        h = torch.cumsum(h, 1) / torch.arange(1, tokens.shape[1] + 1)[None, :, None]  # causal mean
        return self.head(torch.tanh(self.mix(h)))


def test_eval_windows_cover_every_position_once():
    for n_tokens in (2, 3, 10, 65, 66, 1000, 1001):
        for seq_len in (1, 4, 64, 2000):
            for overlap in {0, seq_len // 2, seq_len - 1}:
                starts, first, length = eval_windows(n_tokens, seq_len, overlap)
                assert length == min(seq_len, n_tokens - 1)
                hits = np.zeros(n_tokens, dtype=int)
                for w, (s, f) in enumerate(zip(starts, first)):
                    assert 0 <= s and s + length <= n_tokens - 1 and 0 <= f < length
                    targets = s + 1 + np.arange(f, length)
                    hits[targets] += 1
                    if w > 0:  # context of every scored prediction past window 0 >= overlap
                        assert f >= min(overlap, length - 1)
                assert hits[0] == 0 and np.all(hits[1:] == 1), (n_tokens, seq_len, overlap)


def test_eval_windows_paper_layout():
    starts, first, length = eval_windows(1 + 4 * 16, 16, 0)
    assert starts.tolist() == [0, 16, 32, 48] and first.tolist() == [0, 0, 0, 0] and length == 16
    starts, first, _ = eval_windows(1 + 4 * 16, 16, 4)
    assert starts.tolist() == [0, 12, 24, 36, 48] and first.tolist() == [0, 4, 4, 4, 4]
    # a tail window is moved back to end at the last token and scores only new targets
    starts, first, _ = eval_windows(70, 16, 4)
    assert starts.tolist() == [0, 12, 24, 36, 48, 53] and first.tolist() == [0, 4, 4, 4, 4, 11]


@pytest.mark.parametrize("overlap", [0, 40])
def test_uniform_predictor_absorbs_zero(random_set, overlap):
    m = all_knowledge_measures(Uniform(N), random_set, SEQ, batch_size=3, overlap=overlap)
    assert m["n_predicted"] == K - 1
    assert m["h1_bits"] == pytest.approx((K - 1) * math.log2(N), rel=1e-15)
    assert m["dataset_bits"] == pytest.approx(K * math.log2(N), rel=1e-15)
    assert abs(m["absorbed_bits_entropy"]) < 1e-9 * m["h1_bits"]
    assert abs(m["absorbed_bits_ce"]) < 1e-9 * m["h1_bits"]
    assert abs(m["absorbed_bits_ce_per_token"]) < 1e-12


@pytest.mark.parametrize("overlap", [0, 17])
def test_perfect_predictor_absorbs_h1_under_both(random_set, overlap):
    seq = random_set.sample(0)
    oracle = SequenceOracle(seq, N, min(SEQ, K - 1))
    m = all_knowledge_measures(oracle, random_set, SEQ, batch_size=4, overlap=overlap)
    h1 = (K - 1) * math.log2(N)  # token 0 has no context and is never predicted
    assert m["absorbed_bits_entropy"] == pytest.approx(h1, rel=1e-14)
    assert m["absorbed_bits_ce"] == pytest.approx(h1, rel=1e-14)
    assert m["h2_bits"] == 0.0 and m["loss_bits"] == 0.0
    assert m["absorbed_bits_entropy_per_token"] == pytest.approx(math.log2(N), rel=1e-14)
    assert m["absorbed_bits_ce_per_param"] == pytest.approx(h1 / 1, rel=1e-14)  # the oracle has one parameter


def test_confidently_wrong_predictor(random_set):
    seq = random_set.sample(0)
    h1 = (K - 1) * math.log2(N)
    # probability exactly 1 on a wrong token: the paper's measure says H1, cross-entropy -inf
    m = all_knowledge_measures(SequenceOracle(seq, N, SEQ, shift=1), random_set, SEQ)
    assert m["absorbed_bits_entropy"] == pytest.approx(h1, rel=1e-14)
    assert m["absorbed_bits_ce"] == -math.inf
    # finite margin M: exact per-position values, Z = e^M + n - 1
    M = 40.0
    m = all_knowledge_measures(SequenceOracle(seq, N, SEQ, shift=1, margin=M), random_set, SEQ)
    z = math.exp(M) + N - 1
    entropy = math.log(z) - M * math.exp(M) / z
    assert m["absorbed_bits_entropy"] == pytest.approx(h1 - (K - 1) * entropy / math.log(2), rel=1e-12)
    assert m["absorbed_bits_entropy"] > 0.999999 * h1
    assert m["absorbed_bits_ce"] == pytest.approx(h1 - (K - 1) * math.log2(z), rel=1e-12)
    assert m["absorbed_bits_ce"] < -3 * h1


def test_separate_measures_match_combined_and_direct_computation(random_set):
    model = TinyLM(N)
    combined = all_knowledge_measures(model, random_set, SEQ, batch_size=5)
    ent = entropy_capacity(model, random_set, SEQ, batch_size=1, chunk=7)
    ce = cross_entropy_capacity(model, random_set.path, SEQ, batch_size=16, chunk=1000)
    assert ent["absorbed_bits_entropy"] == pytest.approx(combined["absorbed_bits_entropy"], rel=1e-12)
    assert ce["absorbed_bits_ce"] == pytest.approx(combined["absorbed_bits_ce"], rel=1e-12)
    # direct, non-streaming reference for the paper's layout
    seq = torch.as_tensor(random_set.sample(0).astype(np.int64))
    loss = ent_sum = 0.0
    with torch.no_grad():
        for s in range(0, K - 1, SEQ):
            L = min(SEQ, K - 1 - s)
            if L < SEQ:  # the tail window is moved back to end at the last token
                s, new = K - 1 - SEQ, L
            else:
                new = SEQ
            logp = torch.log_softmax(model(seq[None, s : s + SEQ]).double()[0], -1)[SEQ - new :]
            tgt = seq[s + 1 : s + 1 + SEQ][SEQ - new :]
            loss += float(-logp.gather(1, tgt[:, None]).sum())
            ent_sum += float(-(logp.exp() * logp).sum())
    assert combined["loss_bits"] == pytest.approx(loss / math.log(2), rel=1e-10)
    assert combined["h2_bits"] == pytest.approx(ent_sum / math.log(2), rel=1e-10)


def test_model_mode_restored_and_bad_inputs(random_set):
    model = TinyLM(N)
    model.train()
    token_stats(model, random_set, SEQ)
    assert model.training
    for kwargs, key in (({"seq_len": 0}, "seq_len"), ({"seq_len": SEQ, "batch_size": 0}, "batch_size"), ({"seq_len": SEQ, "overlap": SEQ}, "overlap")):
        with pytest.raises(UserError, match=f"^{key}: "):
            all_knowledge_measures(model, random_set, **kwargs)
    with pytest.raises(UserError, match="^model: predicts 50 tokens"):
        entropy_capacity(Uniform(50), random_set, SEQ)
    with pytest.raises(UserError, match="data directory not found"):
        entropy_capacity(model, random_set.path / "nope", SEQ)


def test_parameter_counts_exclude_unused_rows_and_count_tied_once():
    model = TinyLM(10, d=4)  # emb 10x4, mix 4x4+4, head 10x4+10
    assert count_parameters(model, 10)["n_params"] == 40 + 20 + 50
    counts = count_parameters(model, 10, np.array([0, 3, 3, 7]))
    assert counts["n_params"] == 110 and counts["n_params_used"] == 110 - 7 * (4 + 4 + 1)
    model.head.weight = model.emb.weight  # tied: counted once
    assert count_parameters(model, 10, np.arange(10))["n_params"] == 110 - 40


def test_part33_formula_hand_computed():
    # N=2, N0=8, S0=16; name loss ln2 per person (p1 = ln 2): 2*log2(8/2) = 4 bits;
    # value loss 0: 2*log2(16) = 8 bits; total 12 bits
    assert part33_capacity_bits(2, 8, 16, 2 * math.log(2), 0.0) == pytest.approx(12.0, abs=1e-12)
    # value loss 4 nats per person: 2*(4 - 4/ln2) bits
    assert part33_capacity_bits(2, 8, 16, 2 * math.log(2), 8.0) == pytest.approx(4 + 2 * (4 - 4 / math.log(2)), abs=1e-12)
    # the paper's S0 = 47.59 bits per person
    assert math.log2(2 * (12 * 28 * 200) * 200 * 300 * 100 * 263) == pytest.approx(47.59, abs=0.005)


class PeekingBioOracle(nn.Module):
    """Reads the next token from its own input (teacher forcing) and predicts <eos> at the last
    position: probability 1 on every true token. With `names_uniform`, the three name tokens
    (right after <bos>) are instead uniform over their list."""

    def __init__(self, vocab_size, lists: BioLists | None = None):
        super().__init__()
        self.v = vocab_size
        self.lists = lists
        self.unit = nn.Parameter(torch.ones(()))

    def forward(self, tokens):
        B, T = tokens.shape
        nxt = torch.cat([tokens[:, 1:], torch.full((B, 1), EOS_ID)], 1)
        logits = torch.full((B, T, self.v), -math.inf).scatter(2, nxt[..., None], 0.0)
        if self.lists is not None:
            for pos, name in enumerate(("first_names", "middle_names", "last_names")):
                logits[:, pos] = -math.inf
                logits[:, pos, torch.as_tensor(self.lists.ids[name])] = 0.0
        return logits * self.unit


@pytest.fixture(scope="module")
def bio_dir(tmp_path_factory):
    return make_biographies(60, 3, tmp_path_factory.mktemp("bio") / "data", mode="fresh")


def test_bio_capacity_oracles(bio_dir):
    renderer = BiographyRenderer(bio_dir)
    lists, v, n_people = renderer.lists, renderer.vocab_size, 60
    n0, s0 = lists.n_names, lists.n_attribute_values
    perfect = bio_capacity(PeekingBioOracle(v), bio_dir, seq_len=128, batch_size=7)
    assert perfect["bio_name_tokens"] == 3 * n_people and perfect["bio_value_tokens"] == 9 * n_people
    assert perfect["bio_capacity_bits"] == pytest.approx(n_people * (math.log2(n0) + math.log2(s0)), rel=1e-14)
    assert perfect["bio_capacity_bits"] == pytest.approx(perfect["part33_max_bits"], rel=1e-12)
    names_uniform = bio_capacity(PeekingBioOracle(v, lists), bio_dir, seq_len=128)
    assert names_uniform["bio_name_loss_nats_per_person"] == pytest.approx(math.log(n0), rel=1e-14)
    assert names_uniform["bio_capacity_bits"] == pytest.approx(n_people * math.log2(s0), rel=1e-12)
    uniform = bio_capacity(Uniform(v), bio_dir, seq_len=128, batch_size=5, chunk=9)
    expected = n_people * (math.log2(n0) + math.log2(s0)) - 12 * n_people * math.log2(v)
    assert uniform["bio_capacity_bits"] == pytest.approx(expected, rel=1e-12)
    # a fresh rendering scores the same knowledge for the perfect oracle
    fresh = bio_capacity(PeekingBioOracle(v), (bio_dir, renderer.render(4)), seq_len=128)
    assert fresh["bio_capacity_bits"] == pytest.approx(perfect["bio_capacity_bits"], rel=1e-14)
    # Part 3.3 parameter count: every per-token row of a token never used is dropped
    # (fresh mode: every template word and pronoun counts as used; Uniform has one bias per token)
    words = [t for tpls in lists.templates.values() for tpl in tpls for t in tpl if not isinstance(t, str)]
    used = np.union1d(renderer.fixed().tokens, np.array(words + list(lists.ids["pronouns"])))
    assert uniform["n_params"] == v and uniform["n_params_used"] == len(used) < v
    assert set(np.unique(renderer.render(0).tokens)) <= set(used.tolist())
    assert uniform["bio_capacity_bits_per_param_used"] == pytest.approx(uniform["bio_capacity_bits"] / uniform["n_params_used"])
    assert all_knowledge_measures(PeekingBioOracle(v), bio_dir, 128)["bio_capacity_bits"] == perfect["bio_capacity_bits"]
    with pytest.raises(UserError, match="^seq_len: 20 is shorter"):
        bio_capacity(Uniform(v), bio_dir, seq_len=20)


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from torch import nn
    from vld.data.knowledge.random_tokens import make_random_tokens
    from vld.eval.knowledge import all_knowledge_measures
    k, n = int(sys.argv[2]), int(sys.argv[3])
    data = make_random_tokens(k, n, 0, sys.argv[1])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(n, 4), nn.Linear(4, n))
    with torch.inference_mode():  # load kernels before the baseline (small: keeps the baseline low)
        torch.log_softmax(model(torch.zeros(1, 4, dtype=torch.long)).double(), -1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    m = all_knowledge_measures(model, data, seq_len=128, batch_size=1, chunk=32)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"delta": after - before, "n_predicted": m["n_predicted"], "ce": m["absorbed_bits_ce"]}))
    """
)


@pytest.mark.slow
def test_memory_bounded_for_large_vocabulary(tmp_path):
    k, n = 8_000, 50_257  # k x n float32 = 1.6 GB
    result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(tmp_path / "d"), str(k), str(n)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["n_predicted"] == k - 1 and math.isfinite(out["ce"])
    full_matrix = k * n * 4
    assert out["delta"] < full_matrix / 10, f"peak grew by {out['delta'] / 2**20:.0f} MiB"


@pytest.mark.parametrize("args, message", [
    (dict(limit=0), "limit: must be an integer >= 1, got 0"),
    (dict(limit=2.5), "limit: must be an integer >= 1, got 2.5"),
    (dict(batch_size=True), "batch_size: must be an integer >= 1, got True"),
])
def test_bad_sizes_are_refused_by_name_before_any_scoring(random_set, args, message):
    with pytest.raises(UserError) as info:
        token_stats(Uniform(N), random_set, SEQ, **args)
    assert str(info.value) == message


def test_no_limit_scores_every_window_and_a_limit_fewer(random_set):
    every = token_stats(Uniform(N), random_set, SEQ)
    some = token_stats(Uniform(N), random_set, SEQ, limit=3)
    assert some["n_predicted"] < every["n_predicted"]
