"""iGSM data sets: tokenizer, on-disk layout, worker-independent bytes, fixed-op test sets, CLI errors,
the bytes of a few sets as recorded."""

import dataclasses
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vld.data.igsm import PRESETS, IgsmConfig, generate_dataset
from vld.data.igsm.dataset import CHUNK
from vld.data.igsm.generator import Generator
from vld.data.igsm.judge import Verdict, judge
from vld.data.igsm.lexicon import Lexicon
from vld.data.igsm.tokenizer import EOS, PAD, SEP, UNK, IgsmTokenizer
from vld.data.tokens import TokenSet
from vld.errors import UserError

FILES = ("tokens.npy", "index.npy", "meta.json", "tokenizer.json", "problems.jsonl", "lexicon.json")
SMALL = IgsmConfig(max_op=5, max_edge=8, levels=(2, 3), lexicon_size=5, hierarchies=2)


def test_tokenizer_round_trip_and_specials():
    lex = Lexicon.load()
    tok = IgsmTokenizer.from_lexicon(lex)
    assert IgsmTokenizer.from_lexicon(Lexicon.load()).pieces == tok.pieces  # deterministic
    assert (tok.pad_id, tok.sep_id, tok.eos_id) == (PAD, SEP, EOS) and tok.vocab_size < 2**16
    gen = Generator(dataclasses.replace(PRESETS["med"], format="qp"))
    rng = random.Random(0)
    for op in (1, 5, 15, 23):
        P = gen.make(rng, op, None)
        for text in (P.text, P.solution, str(P.answer)):
            ids = tok.encode(text)
            assert UNK not in ids and tok.decode(ids) == text
        assert tok.prompt_ids(P.text) == tok.encode(P.text) + [SEP]
        gen_ids = tok.encode(P.solution) + [SEP] + tok.encode(str(P.answer)) + [EOS, 7, 8]
        assert tok.split_generation(gen_ids) == (P.solution, str(P.answer))
    assert tok.encode("ab 1234") == [tok.ids["ab"] if "ab" in tok.ids else UNK] + [tok.ids[" 1"], tok.ids["2"], tok.ids["3"], tok.ids["4"]]
    assert tok.encode("\n") == [UNK]
    # generations that are garbage still split
    assert tok.split_generation([]) == ("", "")
    assert tok.split_generation([5, 6]) == (tok.decode([5, 6]), "")
    assert tok.split_generation([EOS, 5, SEP, 6]) == ("", "")
    assert tok.split_generation([5, SEP, 6, SEP, 7]) == (tok.decode([5]), tok.decode([6]))
    assert tok.split_generation([-1, 10**9, "x", None, SEP, PAD]) == ("<unk><unk><unk><unk>", "")


def test_tokenizer_file_round_trip(tmp_path):
    tok = IgsmTokenizer.from_lexicon(Lexicon.load().reduced(5, 1))
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok.to_dict()))
    assert IgsmTokenizer.load(tmp_path).pieces == tok.pieces
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(UserError, match="bad.json: not a"):
        IgsmTokenizer.load(tmp_path / "bad.json")
    with pytest.raises(UserError, match="not found"):
        IgsmTokenizer.load(tmp_path / "missing.json")


def test_dataset_layout_and_same_bytes_for_1_and_2_workers(tmp_path):
    n = CHUNK + 137  # two chunks, the last one partial
    a = generate_dataset(PRESETS["med"], "train", n, 3, tmp_path / "w1", workers=1, progress=False)
    b = generate_dataset(PRESETS["med"], "train", n, 3, tmp_path / "w2", workers=2, progress=False)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ts = TokenSet.open(a, verify_hash=True)
    tok = IgsmTokenizer.load(a)
    lex = Lexicon.load(a)
    rows = [json.loads(line) for line in (a / "problems.jsonl").read_text().splitlines()]
    assert len(ts) == len(rows) == n and ts.vocab_size == tok.vocab_size
    for i in (0, 1, CHUNK - 1, CHUNK, n - 1):
        r = rows[i]
        assert set(r) == {"problem", "question", "solution", "answer", "op", "template_bin"}
        sample = ts.sample(i).tolist()
        assert sample == tok.prompt_ids(r["problem"]) + tok.encode(r["solution"]) + [SEP] + tok.encode(r["answer"]) + [EOS]
        sol, ans = tok.split_generation(sample[len(tok.prompt_ids(r["problem"])) :])
        assert judge(r["problem"], sol, ans, lex) == Verdict(True, True, None)
        assert r["template_bin"] < 16 and r["question"] in r["problem"]
    meta = json.loads((a / "meta.json").read_text())
    lengths = np.diff(ts.index)
    assert meta["token_length"]["max"] == lengths.max() and meta["n"] == n and meta["split"] == "train"
    assert sum(meta["op_histogram"].values()) == n and meta["config"]["max_op"] == 15
    # the longest evaluation prompt (problem <sep>), as evaluation builds it from problems.jsonl
    assert meta["prompt_length"]["max"] == max(len(tok.prompt_ids(r["problem"])) for r in rows)
    # a different seed differs
    c = generate_dataset(PRESETS["med"], "train", 50, 4, tmp_path / "s4", workers=1, progress=False)
    assert (c / "problems.jsonl").read_bytes()[:2000] != (a / "problems.jsonl").read_bytes()[:2000]


def test_the_longest_prompt_is_read_only_from_the_set_params_describe(tmp_path):
    from vld.data.igsm.sets import IgsmData

    igsm = IgsmData.from_dict({"generator": {"max_op": 4}, "train": {"n": 20},
                               "tests": {"op3": {"op": 3, "n": 30, "seed": 5}}})
    out = tmp_path / "op3"
    assert igsm.longest_prompt("op3", out) is None  # not generated yet
    generate_dataset(igsm.generator, "test", 30, 5, out, op=3, workers=1, progress=False)
    tok = IgsmTokenizer.load(out)
    rows = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert igsm.longest_prompt("op3", out) == max(len(tok.prompt_ids(r["problem"])) for r in rows)
    # the same directory no longer holds the set once params.yaml describes another one
    for other in ({"op3": {"op": 3, "n": 31, "seed": 5}}, {"op3": {"op": 3, "n": 30, "seed": 6}},
                  {"op3": {"op": 2, "n": 30, "seed": 5}}):
        assert IgsmData.from_dict({"generator": {"max_op": 4}, "train": {"n": 20}, "tests": other}).longest_prompt(
            "op3", out) is None
    assert IgsmData.from_dict({"generator": {"max_op": 5}, "train": {"n": 20},
                               "tests": {"op3": {"op": 3, "n": 30, "seed": 5}}}).longest_prompt("op3", out) is None


def test_fixed_op_test_sets_and_small_settings(tmp_path):
    out = generate_dataset(PRESETS["med"], "test", 120, 0, tmp_path / "op20", workers=2, op=20, progress=False)
    rows = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert {r["op"] for r in rows} == {20} and all(r["template_bin"] >= 16 for r in rows)
    small = generate_dataset(SMALL, "train", 200, 0, tmp_path / "small", workers=1, progress=False)
    meta = json.loads((small / "meta.json").read_text())
    assert max(int(k) for k in meta["op_histogram"]) <= 5 and meta["vocab_size"] == 452 < IgsmTokenizer.from_lexicon(Lexicon.load()).vocab_size // 3
    assert meta["token_length"]["mean"] < 200
    # a reduced lexicon still spells every possessive: no sample of the set holds <unk>
    tokens = TokenSet.open(small).tokens
    assert UNK not in np.asarray(tokens)


def test_bad_requests_fail_before_writing(tmp_path):
    cases = [
        (dict(cfg=PRESETS["med"], split="train", n=10, op=39), r"^op: 39 is not in 1\.\.38"),
        (dict(cfg=SMALL, split="train", n=10, op=15), r"^op: 15 is not in 1\.\.14"),
        (dict(cfg=PRESETS["med"], split="valid", n=10), r"^split: "),
        (dict(cfg=PRESETS["med"], split="test", n=10, op=1), r"^op: op 1 has a single solution template"),
        (dict(cfg=PRESETS["med"], split="train", n=0), r"^n: "),
        (dict(cfg=PRESETS["med"], split="train", n=-5), r"^n: "),
        (dict(cfg=dataclasses.replace(PRESETS["med"], max_op=50), split="train", n=5), r"^igsm\.max_op: "),
    ]
    for kw, pattern in cases:
        with pytest.raises(UserError, match=pattern):
            generate_dataset(seed=0, out=tmp_path / "out", workers=1, progress=False, **kw)
        assert not (tmp_path / "out").exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not written by vld"):
        generate_dataset(PRESETS["med"], "train", 5, 0, theirs, workers=1, progress=False)
    assert [p.name for p in theirs.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["theirs"]  # no temporary left behind


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "vld.data.igsm", *args], capture_output=True, text=True, timeout=120)


def test_cli(tmp_path):
    out = tmp_path / "cli"
    ok = run_cli("--preset", "hard", "--split", "train", "--n", "40", "--seed", "1", "--out", str(out), "--workers", "1",
                 "--max-op", "6", "--max-edge", "10", "--levels", "2,3", "--lexicon-size", "6", "--format", "qp", "--perm-level", "2", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert meta["config"]["max_op"] == 6 and meta["config"]["format"] == "qp" and meta["config"]["max_edge"] == 10
    assert all(Path(out / f).is_file() for f in FILES)
    again = run_cli("--split", "train", "--n", "5", "--out", str(out), "--workers", "1", "--no-progress")  # ours: replaced
    assert again.returncode == 0, again.stderr
    for args, text in (
        (["--preset", "easy"], "igsm.preset: unknown preset 'easy'"),
        (["--perm-level", "9"], "igsm.perm_level: must be in 0..6"),
        (["--op", "99"], "op: 99 is not in"),
        (["--n", "0"], "n: must be a positive integer"),
        (["--n", "x"], "invalid int value"),
    ):
        base = ["--split", "test", "--n", "5", "--out", str(tmp_path / "never")]
        for i in range(0, len(args), 2):
            if args[i] in base:
                base[base.index(args[i]) + 1] = args[i + 1]
            else:
                base += args[i : i + 2]
        res = run_cli(*base)
        assert res.returncode == 2 and text in res.stderr and res.stderr.count("\n") == 1, res.stderr
        assert res.stderr.startswith("vld: error: ")
    assert not (tmp_path / "never").exists()


# sha256 over tokens.npy, index.npy and problems.jsonl, recorded after issue 25's generator
# changes (layer growth, abstract planning, option weights): a change of the construction, the
# text or the tokens is caught here
RECORDED_SETS = {
    "med_train": ((PRESETS["med"], "train", 300, 0, None),
                  "aabc72ddb3f18e3c3c7e7ebe0b564f8651921a29c58c5efdfab2735719cc39c6"),
    "med_test20": ((PRESETS["med"], "test", 100, 1, 20),
                   "40f04d20bfe2f1378f390e010e5982e35c47c88130a560d7e098d227ee4da80b"),
    "hard_reask_qp": ((dataclasses.replace(PRESETS["hard"], reask=True, format="qp"), "train", 200, 2, None),
                      "7d0188b94dfa54e1c5911610828d778cf24b7bbc8876b9b56b62a7b62e96ce12"),
    "small_perm0": ((dataclasses.replace(SMALL, perm_level=0), "train", 300, 3, None),
                    "fd78a3fb5e61375b15fdcb31ca012dd019e047d25093223925f763cb824db0e6"),
}


@pytest.mark.parametrize("name", sorted(RECORDED_SETS))
def test_generated_sets_are_byte_identical_to_the_recorded_ones(tmp_path, name):
    (cfg, split, n, seed, op), recorded = RECORDED_SETS[name]
    out = generate_dataset(cfg, split, n, seed, tmp_path / name, workers=1, op=op, progress=False)
    digest = hashlib.sha256()
    for file in ("tokens.npy", "index.npy", "problems.jsonl"):
        digest.update((out / file).read_bytes())
    assert digest.hexdigest() == recorded
