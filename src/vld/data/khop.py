"""k-hop induction (dense form, Sanford, Hsu and Telgarsky 2024): serial depth as a dial.

A sequence X = x_0..x_{n-1} over an alphabet of size a, no letter equal to the one before it.
find(i) = 1 + the last j < i with x_j = x_i (undefined when x_i is new); hop_0(i) = i,
hop_k(i) = find(hop_{k-1}(i)). The label of position i is x_{hop_k(i)}, or NONE once a step is
undefined. The model reads one token naming k, then X; every position of X is supervised.

Token ids: letters 0..a-1, NONE = a, "k hops" = a + 1 + k. A sequence is stored as
`inputs` [n + 1] (the hop token, then X) and `labels` [n + 1] aligned with the inputs, where
label -1 (no label: the hop token's position) is left out of the loss. find(i) < i, so a
label never reads a letter the causal model has not seen.

Training data is a stream: the sequences of optimizer step s are a pure function of
(the spec's seed, the run's seed, s), so a resumed run sees exactly what an uninterrupted one would, whatever the number
of processes or workers. Test sets (one per hop count) are written once, as files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vld.declared import check_keys, declared_keys
from vld.errors import fail

NO_LABEL = -1
INPUTS, LABELS, META = "inputs.npy", "labels.npy", "meta.json"


@dataclass(frozen=True)
class KHopSpec:
    """One k-hop data set of params.yaml (`data.khop.<name>`)."""

    alphabet: int = 4
    length: int = 64
    min_hops: int = 0
    max_hops: int = 8
    seed: int = 0  # the training stream
    test_sequences: int = 512  # per hop count
    test_seed: int = 1

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, where: str = "khop") -> "KHopSpec":
        if values is not None and not isinstance(values, Mapping):
            fail(where, f"must be a mapping of {', '.join(declared_keys(cls))}, got {values!r}")
        values = dict(values or {})
        check_keys(values, cls, where)
        spec = cls(**values)
        spec.validate(where)
        return spec

    def validate(self, where: str = "khop") -> None:
        minimum = {"alphabet": 2, "length": 2, "min_hops": 0, "max_hops": 0, "seed": 0,
                   "test_sequences": 1, "test_seed": 0}
        for key, low in minimum.items():
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                fail(f"{where}.{key}", f"must be an integer, got {value!r}")
            if value < low:
                fail(f"{where}.{key}", f"must be >= {low}, got {value}")
        if self.max_hops < self.min_hops:
            fail(f"{where}.max_hops", f"{self.max_hops} is below min_hops {self.min_hops}")
        if self.max_hops > self.longest_hop_chain:
            # each find() moves at least one position back and never reaches 0 (hop_labels)
            fail(f"{where}.max_hops", f"{self.max_hops} hops cannot fit in sequences of length {self.length}: a chain"
                 f" of hops is at most length - 2 = {self.longest_hop_chain} long, so every label of a larger hop"
                 " count is NONE by definition")
        if self.vocab_size > 2**15:
            fail(f"{where}.alphabet", f"alphabet + hop tokens must stay below 32768, got {self.vocab_size}")

    @property
    def longest_hop_chain(self) -> int:
        """The largest hop count with a defined label in some sequence: find(i) <= i - 1 (no
        letter equals the one before it) and find(i) >= 1, so k hops from position n - 1 need
        n - 1 - k >= 1."""
        return self.length - 2

    @property
    def none_id(self) -> int:
        return self.alphabet

    def hop_token(self, k: int) -> int:
        return self.alphabet + 1 + int(k)

    @property
    def vocab_size(self) -> int:
        return self.alphabet + 2 + self.max_hops

    @property
    def hop_counts(self) -> list[int]:
        return list(range(self.min_hops, self.max_hops + 1))

    @property
    def seq_len(self) -> int:
        """Model input length: the hop token and the n letters."""
        return self.length + 1


def letters(rng: np.random.Generator, count: int, length: int, alphabet: int) -> np.ndarray:
    """[count, length] letters, uniform, none equal to the one before it."""
    first = rng.integers(0, alphabet, size=(count, 1))
    # each later letter moves 1..a-1 steps around the alphabet: uniform over the a-1 others
    steps = rng.integers(1, alphabet, size=(count, length - 1))
    return (np.concatenate([first, steps], axis=1).cumsum(axis=1) % alphabet).astype(np.int64)


def find_targets(x: np.ndarray) -> np.ndarray:
    """find(i) for every position of every row: 1 + previous occurrence of x_i, or -1."""
    count, length = x.shape
    rows = np.arange(count)
    last_seen = np.full((count, int(x.max()) + 1), -1, dtype=np.int64)
    found = np.empty_like(x)
    for i in range(length):
        previous = last_seen[rows, x[:, i]]
        found[:, i] = np.where(previous >= 0, previous + 1, -1)
        last_seen[rows, x[:, i]] = i
    return found


def hop_labels(x: np.ndarray, hops: np.ndarray, none_id: int) -> np.ndarray:
    """Label of every position of each row: x[hop_k(i)] with k = hops[row], else none_id."""
    count, length = x.shape
    found = find_targets(x)
    rows = np.arange(count)[:, None]
    position = np.broadcast_to(np.arange(length), (count, length)).copy()
    for step in range(int(hops.max(initial=0))):
        active = (step < hops)[:, None] & (position >= 0)
        jumped = found[rows, np.maximum(position, 0)]
        position = np.where(active, jumped, position)
    return np.where(position >= 0, x[rows, np.maximum(position, 0)], none_id)


def make_sequences(spec: KHopSpec, rng: np.random.Generator, hops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, labels), each [len(hops), n + 1] int64, for the given hop count of each row."""
    hops = np.asarray(hops, dtype=np.int64)
    x = letters(rng, len(hops), spec.length, spec.alphabet)
    inputs = np.concatenate([(spec.alphabet + 1 + hops)[:, None], x], axis=1)
    labels = np.concatenate([np.full((len(hops), 1), NO_LABEL), hop_labels(x, hops, spec.none_id)], axis=1)
    return inputs, labels


def training_batch(spec: KHopSpec, step: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The `size` training sequences of optimizer step `step` (hop counts uniform in range) of the
    stream of (spec.seed, seed): `seed` is the training run's, so seeds differ in data order too."""
    rng = np.random.default_rng([spec.seed, int(seed), int(step)])
    hops = rng.integers(spec.min_hops, spec.max_hops + 1, size=size)
    return make_sequences(spec, rng, hops)


def test_set(spec: KHopSpec, hops: int) -> tuple[np.ndarray, np.ndarray]:
    """The test sequences of one hop count (their own seed, apart from the training stream)."""
    rng = np.random.default_rng([spec.test_seed, 1_000_003, int(hops)])
    return make_sequences(spec, rng, np.full(spec.test_sequences, int(hops)))


def _sha256(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def write_test_sets(spec: KHopSpec, out_dir: str | Path) -> dict[str, Any]:
    """One directory per hop count, `k<hops>/{inputs,labels}.npy`, plus meta.json (the spec, sizes
    and a sha256 of every array). Written into `out_dir` (the caller makes it atomic)."""
    out_dir = Path(out_dir)
    dtype = np.int16
    sets = {}
    for hops in spec.hop_counts:
        inputs, labels = test_set(spec, hops)
        where = out_dir / f"k{hops}"
        where.mkdir(parents=True, exist_ok=True)
        np.save(where / INPUTS, inputs.astype(dtype))
        np.save(where / LABELS, labels.astype(dtype))
        sets[f"k{hops}"] = {"hops": hops, "sequences": int(len(inputs)), "sha256": _sha256(inputs, labels)}
    meta = {"generator": "vld.data.khop", "spec": asdict(spec), "vocab_size": spec.vocab_size, "sets": sets}
    (out_dir / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return meta


def read_test_sets(path: str | Path) -> tuple[KHopSpec, dict[int, tuple[np.ndarray, np.ndarray]]]:
    """The spec and {hops: (inputs, labels)} of a directory written by write_test_sets; arrays are
    checked against the sha256 recorded in meta.json (a changed file is a one-line error)."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
        spec = KHopSpec(**meta["spec"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        fail(str(path / META), f"not a k-hop test-set directory ({type(err).__name__})")
    sets = {}
    for name, entry in meta["sets"].items():
        try:
            inputs = np.load(path / name / INPUTS, allow_pickle=False).astype(np.int64)
            labels = np.load(path / name / LABELS, allow_pickle=False).astype(np.int64)
        except (OSError, ValueError) as err:
            fail(str(path / name), f"unreadable k-hop test set ({type(err).__name__})")
        if _sha256(inputs, labels) != entry["sha256"]:
            fail(str(path / name), "contents differ from the sha256 in meta.json (regenerate: dvc repro)")
        sets[int(entry["hops"])] = (inputs, labels)
    return spec, sets


def constant_predictor_error(labels: np.ndarray) -> float:
    """Error of the best constant prediction over the labelled positions (the chance line)."""
    values = labels[labels != NO_LABEL]
    if values.size == 0:
        return float("nan")
    return 1.0 - np.bincount(values).max() / values.size
