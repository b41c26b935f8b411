"""Knowledge datasets: random tokens and random biographies (entropy, uniqueness, determinism,
masks, one-line errors)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vld.data.knowledge import biographies, random_tokens
from vld.data.knowledge.biographies import (
    ATTRIBUTES,
    BioLists,
    BiographyRenderer,
    BOS_ID,
    EOS_ID,
    dataset_entropy,
    log2_binomial,
    make_biographies,
)
from vld.data.knowledge.random_tokens import make_random_tokens
from vld.data.tokens import TokenSet
from vld.errors import UserError

FILES = ("tokens.npy", "index.npy", "meta.json", "tokenizer.json")
BIO_FILES = FILES + ("people.jsonl", "masks.npy", "bio_lists.json")


def read_all(path: Path, names) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in names}


def test_random_tokens_set(tmp_path):
    out = make_random_tokens(5000, 300, 7, tmp_path / "rt")
    ts = TokenSet.open(out, verify_hash=True)
    assert len(ts) == 1 and ts.vocab_size == 300 and ts.meta["n_tokens"] == 5000
    seq = ts.sample(0)
    assert seq.dtype == np.uint16 and seq.min() >= 0 and seq.max() < 300
    assert ts.meta["dataset_bits"] == pytest.approx(5000 * math.log2(300), rel=1e-15)
    assert ts.meta["params"] == {"k": 5000, "n": 300, "seed": 7}
    assert ts.tokenizer()["type"] == "numbers" and ts.tokenizer()["vocab_size"] == 300
    # IID uniform: every value appears, counts near k/n (chi-square well inside 5 sigma)
    counts = np.bincount(seq, minlength=300)
    chi2 = float(((counts - 5000 / 300) ** 2 / (5000 / 300)).sum())
    assert abs(chi2 - 299) < 5 * math.sqrt(2 * 299)
    big = make_random_tokens(10, 70000, 0, tmp_path / "big")
    assert TokenSet.open(big).tokens.dtype == np.uint32


def test_random_tokens_deterministic(tmp_path):
    a = make_random_tokens(2000, 50257, 3, tmp_path / "a")
    b = make_random_tokens(2000, 50257, 3, tmp_path / "b")
    c = make_random_tokens(2000, 50257, 4, tmp_path / "c")
    assert read_all(a, FILES) == read_all(b, FILES)
    assert (a / "tokens.npy").read_bytes() != (c / "tokens.npy").read_bytes()


@pytest.mark.parametrize(
    "k, n, seed, message",
    [(0, 10, 0, "^k: must be >= 1"), (10, 1, 0, "^n: must be >= 2"), (10, 10, -1, "^seed: "), (2.5, 10, 0, "^k: must be an integer")],
)
def test_random_tokens_invalid(tmp_path, k, n, seed, message):
    with pytest.raises(UserError, match=message):
        make_random_tokens(k, n, seed, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_random_tokens_cli(tmp_path, capsys):
    assert random_tokens.main(["--k", "100", "--n", "7", "--seed", "1", "--out", str(tmp_path / "o")]) == 0
    assert TokenSet.open(tmp_path / "o").meta["params"] == {"k": 100, "n": 7, "seed": 1}
    result = subprocess.run([sys.executable, "-m", "vld.data.knowledge.random_tokens", "--k", "10", "--n", "1", "--out", str(tmp_path / "p")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == ["vld: error: n: must be >= 2 (a 1-value vocabulary holds no information), got 1"]


def test_shipped_lists_match_part33_sizes():
    lists = BioLists.load()
    assert lists.n_names == 400 * 400 * 1000
    assert lists.n_attribute_values == 2 * (12 * 28 * 200) * 200 * 300 * 100 * 263
    assert math.log2(lists.n_attribute_values) == pytest.approx(47.59, abs=0.005)
    assert len(set(lists.vocab)) == len(lists.vocab)
    assert all(len(lists.templates[a]) >= 5 for a in ATTRIBUTES)


def tiny_lists(tmp_path) -> Path:
    raw = json.loads(biographies.LISTS_FILE.read_text())
    raw.update(first_names=["Ann", "Bo"], middle_names=["Cy", "Di"], last_names=["Ek", "Fu"], cities=["Gx", "Hy", "Iz"],
               universities=["U1"], majors=["M1", "M2"], employers=[["E1", "Gx"], ["E2", "Iz"]], months=["Jan"], days=[1, 2], years=[2000, 2002])
    path = tmp_path / "lists.json"
    path.write_text(json.dumps(raw))
    return path


def test_entropy_exact_and_names_unique(tmp_path):
    lists_path = tiny_lists(tmp_path)
    lists = BioLists.load(lists_path)
    n0, s0 = 8, 2 * 1 * 2 * 3 * 3 * 1 * 2 * 2  # gender, month, day, year, city, university, major, employer
    assert lists.n_names == n0 and lists.n_attribute_values == s0
    for people in (1, 5, 8):
        out = make_biographies(people, 1, tmp_path / f"b{people}", lists_path=lists_path)
        meta = TokenSet.open(out).meta
        assert meta["dataset_bits"] == pytest.approx(math.log2(math.comb(n0, people)) + people * math.log2(s0), rel=1e-14)
        assert meta["part33_max_bits"] == pytest.approx(people * math.log2(n0 * s0), rel=1e-14)
        records = [json.loads(line) for line in (out / "people.jsonl").read_text().splitlines()]
        assert len({r["name"] for r in records}) == people
    # all 8 names used exactly once when N = N0; a ninth person is impossible
    assert sorted(r["name"] for r in records) == sorted(f"{a} {b} {c}" for a in ("Ann", "Bo") for b in ("Cy", "Di") for c in ("Ek", "Fu"))
    with pytest.raises(UserError, match="^people: 9 people but only 8 unique names"):
        make_biographies(9, 1, tmp_path / "b9", lists_path=lists_path)
    # large-N entropy (lgamma path) agrees with the exact integer formula
    assert log2_binomial(160_000_000, 3) == pytest.approx(math.log2(math.comb(160_000_000, 3)), rel=1e-12)
    assert log2_binomial(20_000, 700) == pytest.approx(math.log2(math.comb(20_000, 700)), rel=1e-12)
    assert dataset_entropy(BioLists.load(), 1)["dataset_bits"] == pytest.approx(math.log2(160e6) + 47.5916, abs=1e-3)


def test_attributes_uniform_and_consistent(tmp_path):
    out = make_biographies(3000, 0, tmp_path / "b")
    records = [json.loads(line) for line in (out / "people.jsonl").read_text().splitlines()]
    lists = BioLists.load()
    assert len({r["name"] for r in records}) == 3000
    employer_city = dict(map(tuple, lists.raw["employers"]))
    assert all(employer_city[r["employer"]] == r["employer_city"] for r in records)
    genders = Counter(r["pronoun"] for r in records)
    assert abs(genders["He"] - 1500) < 5 * math.sqrt(750)
    months = Counter(r["index"]["month"] for r in records)
    chi2 = sum((c - 250) ** 2 / 250 for c in months.values())
    assert len(months) == 12 and chi2 < 11 + 5 * math.sqrt(22)


def test_rendering_masks_and_modes(tmp_path):
    out = make_biographies(40, 2, tmp_path / "b", mode="fresh")
    renderer = BiographyRenderer(out)
    vocab = renderer.lists.vocab
    records = [json.loads(line) for line in (out / "people.jsonl").read_text().splitlines()]
    fixed = renderer.fixed()
    fresh = renderer.render(epoch=1)
    for rendering in (fixed, fresh):
        assert len(rendering.index) == 41
        for i, record in enumerate(records):
            a, b = rendering.index[i], rendering.index[i + 1]
            words = [vocab[t] for t in rendering.tokens[a:b]]
            assert rendering.tokens[a] == BOS_ID and rendering.tokens[b - 1] == EOS_ID
            assert [w for w, m in zip(words, rendering.name_mask[a:b]) if m] == record["name"].split()
            assert words[1:4] == record["name"].split() and words.count(".") == 6
            values = [w for w, m in zip(words, rendering.value_mask[a:b]) if m]
            month, day, year = record["birth_date"].replace(",", "").split()
            expected = [month, day, year, record["birth_city"], record["university"], record["major"], record["employer"], record["employer_city"], record["pronoun"]]
            assert sorted(values) == sorted(expected)
    # fixed: canonical sentence order; fresh: orders vary, deterministic in (seed, epoch)
    assert not np.array_equal(fixed.tokens, fresh.tokens)
    assert all(np.array_equal(x, y) for x, y in zip(fresh, renderer.render(epoch=1)))
    assert not np.array_equal(fresh.tokens, renderer.render(epoch=2).tokens)
    assert not np.array_equal(fresh.tokens, renderer.render(epoch=1, seed=9).tokens)
    stored = TokenSet.open(out)
    assert np.array_equal(stored.tokens, fixed.tokens) and stored.meta["params"]["mode"] == "fresh"
    with pytest.raises(UserError, match="^epoch: "):
        renderer.render(-1)


def test_biographies_deterministic_and_cli(tmp_path):
    a = make_biographies(200, 5, tmp_path / "a")
    b = make_biographies(200, 5, tmp_path / "b")
    c = make_biographies(200, 6, tmp_path / "c")
    assert read_all(a, BIO_FILES) == read_all(b, BIO_FILES)
    assert (a / "people.jsonl").read_bytes() != (c / "people.jsonl").read_bytes()
    assert biographies.main(["--people", "3", "--seed", "0", "--mode", "fresh", "--out", str(tmp_path / "cli")]) == 0
    assert TokenSet.open(tmp_path / "cli").meta["params"] == {"people": 3, "seed": 0, "mode": "fresh"}
    for argv, message in ((["--people", "0"], "people: must be >= 1"), (["--people", "2", "--mode", "other"], "mode: must be one of fixed, fresh"),
                          (["--people", "160000001"], "people: 160000001 people but only 160000000 unique names")):
        with pytest.raises(UserError, match=f"^{message}"):
            biographies.main(argv + ["--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
