"""k-hop data: the vectorised generator against a loop-over-positions reference written here,
the no-repeat rule, causality of the labels, determinism and the stream's independence of
how a step's batch is split."""

from __future__ import annotations

import numpy as np
import pytest

from vld.data import khop
from vld.data.khop import NO_LABEL, KHopSpec
from vld.errors import UserError


def reference_label(x: list[int], i: int, k: int, none_id: int) -> int:
    """The definition, literally: hop_0(i) = i, hop_k(i) = find(hop_{k-1}(i)),
    find(i) = 1 + max{j < i : x_j = x_i}, undefined when x_i has not occurred before i."""
    position = i
    for _ in range(k):
        earlier = [j for j in range(position) if x[j] == x[position]]
        if not earlier:
            return none_id
        position = max(earlier) + 1
    return x[position]


@pytest.mark.parametrize("alphabet,length", [(2, 9), (3, 20), (4, 64), (7, 33)])
def test_labels_equal_the_definition_for_every_hop_count(alphabet, length):
    spec = KHopSpec(alphabet=alphabet, length=length, min_hops=0, max_hops=12)
    rng = np.random.default_rng(alphabet * 100 + length)
    hops = rng.integers(0, 13, size=200)
    inputs, labels = khop.make_sequences(spec, rng, hops)
    assert inputs.shape == labels.shape == (200, length + 1)
    for row, k in enumerate(hops):
        assert inputs[row, 0] == spec.hop_token(k) and labels[row, 0] == NO_LABEL
        x = [int(v) for v in inputs[row, 1:]]
        expected = [reference_label(x, i, int(k), spec.none_id) for i in range(length)]
        assert labels[row, 1:].tolist() == expected, (k, x)


def test_undefined_cases_and_hop_zero():
    spec = KHopSpec(alphabet=3, length=6, max_hops=3)
    x = np.array([[0, 1, 0, 2, 1, 0]])
    # k = 0: the letter itself; k = 1: the letter after the previous occurrence
    assert khop.hop_labels(x, np.array([0]), 3).tolist() == [[0, 1, 0, 2, 1, 0]]
    assert khop.hop_labels(x, np.array([1]), 3).tolist() == [[3, 3, 1, 3, 0, 2]]
    # k = 2 at i = 4: find(4) = 2, find(2) = 1, x_1 = 1; at i = 5: find(5) = 3, and 2 is new at 3
    assert khop.hop_labels(x, np.array([2]), 3).tolist() == [[3, 3, 3, 3, 1, 3]]
    assert spec.vocab_size == 3 + 2 + 3


def test_no_letter_repeats_the_one_before_and_letters_are_uniform():
    spec = KHopSpec(alphabet=4, length=64)
    inputs, _ = khop.training_batch(spec, 0, 4096)
    x = inputs[:, 1:]
    assert (x[:, 1:] != x[:, :-1]).all()
    counts = np.bincount(x.ravel(), minlength=4) / x.size
    assert np.abs(counts - 0.25).max() < 0.01
    # each next letter is uniform over the a - 1 others
    moves = (x[:, 1:] - x[:, :-1]) % 4
    assert np.abs(np.bincount(moves.ravel(), minlength=4)[1:] / moves.size - 1 / 3).max() < 0.01


def test_labels_never_read_the_future():
    """Changing letters after position i never changes the labels up to i."""
    spec = KHopSpec(alphabet=4, length=40, max_hops=8)
    rng = np.random.default_rng(5)
    for _ in range(50):
        inputs, labels = khop.make_sequences(spec, rng, rng.integers(0, 9, size=1))
        cut = int(rng.integers(1, 40))
        changed = inputs.copy()
        tail = khop.letters(rng, 1, 40 - cut + 1, 4)[:, 1:]
        changed[0, cut + 1:] = tail[0, : 40 - cut]
        again = khop.hop_labels(changed[:, 1:], np.array([inputs[0, 0] - spec.alphabet - 1]), spec.none_id)
        assert again[0, :cut].tolist() == labels[0, 1 : cut + 1].tolist()


def test_stream_is_deterministic_and_a_pure_function_of_seed_and_step():
    spec = KHopSpec(seed=3)
    a = khop.training_batch(spec, 17, 32)
    b = khop.training_batch(spec, 17, 32)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    other_step = khop.training_batch(spec, 18, 32)
    assert not np.array_equal(a[0], other_step[0])
    other_seed = khop.training_batch(KHopSpec(seed=4), 17, 32)
    assert not np.array_equal(a[0], other_seed[0])
    other_run = khop.training_batch(spec, 17, 32, seed=1)  # a training run's own seed
    assert not np.array_equal(a[0], other_run[0])
    hops = a[0][:, 0] - spec.alphabet - 1
    assert hops.min() >= spec.min_hops and hops.max() <= spec.max_hops


def test_stream_batches_do_not_depend_on_workers_or_micro_batches(tmp_path):
    """The datamodule's items are slices of one per-step batch: any split gives the same rows."""
    import torch

    from vld.train.datamodules import _KHopStream

    spec = KHopSpec(max_hops=4)
    stream = _KHopStream(spec, 8)
    whole = stream.__getitems__([(5, j) for j in range(8)])
    fresh = _KHopStream(spec, 8)
    halves = fresh.__getitems__([(5, j) for j in range(4, 8)]) + fresh.__getitems__([(5, j) for j in range(4)])
    halves = halves[4:] + halves[:4]
    for u, v in zip(whole, halves):
        assert torch.equal(u["inputs"], v["inputs"]) and torch.equal(u["labels"], v["labels"])
    inputs, labels = khop.training_batch(spec, 5, 8)
    assert torch.equal(whole[3]["inputs"], torch.from_numpy(inputs[3]))


def test_test_sets_round_trip_and_detect_a_changed_file(tmp_path):
    spec = KHopSpec(alphabet=4, length=16, min_hops=1, max_hops=3, test_sequences=20)
    meta = khop.write_test_sets(spec, tmp_path)
    assert sorted(meta["sets"]) == ["k1", "k2", "k3"]
    read_spec, sets = khop.read_test_sets(tmp_path)
    assert read_spec == spec
    for k, (inputs, labels) in sets.items():
        expected = khop.test_set(spec, k)
        assert np.array_equal(inputs, expected[0]) and np.array_equal(labels, expected[1])
        assert (inputs[:, 0] == spec.hop_token(k)).all()
    labels = np.load(tmp_path / "k2" / khop.LABELS)
    labels[0, 1] = (labels[0, 1] + 1) % spec.alphabet
    np.save(tmp_path / "k2" / khop.LABELS, labels)
    with pytest.raises(UserError, match="k2: contents differ"):
        khop.read_test_sets(tmp_path)


def test_constant_predictor_error():
    labels = np.array([[NO_LABEL, 1, 1, 2, 0], [NO_LABEL, 1, 3, 1, 1]])
    assert khop.constant_predictor_error(labels) == pytest.approx(1 - 5 / 8)


@pytest.mark.parametrize("alphabet,length", [(2, 5), (2, 7), (3, 6), (4, 5)])
def test_the_longest_hop_chain_is_length_minus_two(alphabet, length):
    """Over every sequence (no letter equal to the one before it), the largest hop count with a
    defined label, by the definition (reference_label), is the spec's longest_hop_chain."""
    import itertools

    spec = KHopSpec(alphabet=alphabet, length=length)
    none_id = alphabet
    longest = 0
    for x in itertools.product(range(alphabet), repeat=length):
        if any(a == b for a, b in zip(x, x[1:])):
            continue
        for k in range(longest + 1, length + 1):
            if all(reference_label(list(x), i, k, none_id) == none_id for i in range(length)):
                break
            longest = k
    assert longest == spec.longest_hop_chain == length - 2


def test_a_hop_count_the_sequences_cannot_hold_is_refused():
    KHopSpec.from_dict({"length": 40, "max_hops": 38}, "data.khop.kh40")  # the longest chain: valid
    with pytest.raises(UserError) as info:
        KHopSpec.from_dict({"length": 40, "min_hops": 0, "max_hops": 200}, "data.khop.kh40")
    assert str(info.value).startswith("data.khop.kh40.max_hops: 200 hops cannot fit in sequences of length 40")


@pytest.mark.parametrize("values,where", [
    ({"alphabet": 1}, "khop.alphabet"), ({"length": True}, "khop.length"),
    ({"min_hops": 3, "max_hops": 2}, "khop.max_hops"), ({"hops": 3}, "khop.hops"),
    ({"test_sequences": 0}, "khop.test_sequences"),
])
def test_bad_specs_are_one_line_errors(values, where):
    with pytest.raises(UserError, match=f"^{where}: "):
        KHopSpec.from_dict(values, "khop")
