"""iGSM shape against the reference generator's figures (docs/igsm.md, bench/igsm_vs_reference.py).

Tolerance: a share measured on n problems passes if it is within 4 binomial standard deviations
of the reference's figure at that n, plus 1 point for the reference's own sampling error
(its figures come from 6,000 train / 4,000 test problems, counted from text). Seeds are fixed,
so the tests are deterministic; the tolerance says how far a faithful generator could land by
chance. Answers equal to 0 are a known remaining gap (docs/igsm.md): checked as a band.
"""

import collections
import math
import random
import sys
from pathlib import Path

import pytest
from scipy.stats import chisquare

from vld.data.igsm.generator import ABS, PRESETS, Generator

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from igsm_shape import inversions_per_10, make_set, measure, more_than_zero_share  # noqa: E402

REFERENCE = {  # the reference generator (med), bench/igsm_vs_reference.py --seed 1, issue 25
    "train": {"abstract_step": 0.661, "abstract_question": 0.405, "reads_abstract": 0.187},
    15: {"abstract_step": 0.977, "abstract_question": 0.519, "reads_abstract": 0.282},
    20: {"abstract_step": 0.988, "abstract_question": 0.560, "reads_abstract": 0.320},
}
REFERENCE_ZERO = {"train": 0.117, 15: 0.135, 20: 0.144}  # answers equal to 0


def within(measured: float, reference: float, n: int) -> bool:
    return abs(measured - reference) <= 4 * math.sqrt(reference * (1 - reference) / n) + 0.01


@pytest.fixture(scope="module")
def med_train():
    return make_set("med", "train", None, 3000, 101)


@pytest.mark.parametrize("which,n", [("train", 3000), (15, 1000), (20, 1000)])
def test_abstract_shares_and_zero_answers_match_the_reference(which, n, med_train):
    gen, probs = med_train if which == "train" else make_set("med", "test", which, n, 102)
    got = measure(gen, probs)
    for key, ref in REFERENCE[which].items():
        assert within(got[key], ref, n), (which, key, got[key], ref)
    # zeros propagate through abstract sums: well above 1/23, still under the reference's share
    # (it re-reads parameters more, so equal values meet more often: docs/igsm.md)
    assert 1.4 / 23 < got["answer_zero"] < REFERENCE_ZERO[which]


def test_structure_edges_and_depth_at_low_op(med_train):
    gen, probs = med_train
    got = measure(gen, probs)
    assert abs(got["edges_mean"] - 8.99) < 0.6
    low = [P for P in probs if P.op <= 3]
    # the reference: 42 % (issue 25, 6,000 problems); the softmax law itself gives 41-42 % here and the template split a
    # little less (docs/igsm.md): a band, not the reference's figure
    assert 0.34 < sum(P.d == 2 for P in low) / len(low) < 0.5


def test_depth_law_at_op_1_is_the_softmax():
    """At op 1 every drawn structure is feasible, so d follows the softmax of -(r - c)^2 exactly."""
    gen = Generator(PRESETS["med"])
    rng = random.Random(5)
    n = 2000
    counts = collections.Counter(gen.make(rng, 1, "train").d for _ in range(n))
    w = [math.exp(-((0 - c) ** 2)) for c in (0.2, 0.5, 0.8)]
    expected = [n * x / sum(w) for x in w]
    assert chisquare([counts[d] for d in (2, 3, 4)], expected).pvalue > 0.001


def test_depth_and_width_grow_with_op():
    gen = Generator(PRESETS["med"])
    rng = random.Random(6)
    shape = {}
    n = 600
    for op in (1, 15):
        probs = [gen.make(rng, op, "train") for _ in range(n)]
        shape[op] = (sum(P.d == 2 for P in probs) / n, sum(P.d == 4 for P in probs) / n, sum(sum(P.widths) / P.d for P in probs) / n)
    # the law: d = 2 in 42 % at op 1, 28 % at op 15; d = 4 in 23 % and 37 %
    assert shape[1][0] > shape[15][0] + 0.08 and shape[1][1] + 0.08 < shape[15][1]
    assert shape[1][2] + 0.3 < shape[15][2]


def test_more_than_uses_k_zero(med_train):
    share = more_than_zero_share(med_train[1])
    assert within(share, 1 / 23, 1500)  # K uniform in 0..22 (the reference: 4.1 %)


@pytest.mark.parametrize("level,reference", [(0, 0.0), (2, 2.4), (3, 3.8), (4, 5.0), (6, 0.0)])
def test_permutation_levels_match_the_reference(level, reference):
    gen, probs = make_set("med", "train", None, 600, 7, perm_level=level)
    assert abs(inversions_per_10(probs) - reference) < 0.4
    if level == 6:
        assert all(P.stated_order == P.order for P in probs)
    if level == 0:  # a random topological order: not always the order built in
        assert sum(P.stated_order != P.order for P in probs) > 100


def test_reask_keeps_its_op_and_asks_abstract_parameters():
    gen, probs = make_set("med", "test", 15, 200, 8, reask=True)
    ops = [P.op for P in probs]
    assert min(ops) >= 8 and sum(ops) / len(ops) > 11
    assert 0.3 < sum(P.query >= ABS for P in probs) / len(probs) < 0.9
    gen, probs = make_set("med", "train", None, 600, 9, reask=True)
    assert sum(P.op == 1 for P in probs) / len(probs) < 0.2  # the base set has 13 % at op 1
