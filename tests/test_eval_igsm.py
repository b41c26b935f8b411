"""iGSM evaluation on real generated test sets with the real tokenizer and judge: an oracle
model scores 100%, a garbage one 0% with reasons counted; the most-common-answer baseline,
batching, budgets, limits and bad input. Then compute_profile and evaluate_variant."""

from __future__ import annotations

import json
import types
from collections import Counter
from pathlib import Path

import pytest
import torch

from vld.errors import UserError
from vld.eval.igsm import (answer_baseline, evaluate_igsm, most_common_answer, reason_code,
                           write_records)


@pytest.fixture(scope="module")
def igsm_sets(tmp_path_factory):
    """A 12-problem op3 test set and a 30-problem train set of a small iGSM setting."""
    from vld.data.igsm import IgsmConfig, generate_dataset

    root = tmp_path_factory.mktemp("igsm")
    # The full lexicon: a reduced one may lack the "'s" token (reported to the iGSM owner).
    config = IgsmConfig(max_op=4, max_edge=6)
    test = generate_dataset(config, "test", 12, 0, root / "test", workers=1, op=3, progress=False)
    train = generate_dataset(config, "train", 30, 1, root / "train", workers=1, progress=False)
    return {"test": Path(test), "train": Path(train)}


def problems_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "problems.jsonl").read_text().splitlines()]


class ScriptedModel(torch.nn.Module):
    """generate answers each prompt from a script (prompt ids -> continuation ids); by default
    the reference continuation solution <sep> answer <eos>: an oracle."""

    def __init__(self, test_dir: Path, max_seq_len: int = 512, rewrite=None):
        super().__init__()
        from vld.data.igsm.tokenizer import IgsmTokenizer

        self.config = types.SimpleNamespace(max_seq_len=max_seq_len)
        self.tokenizer = tok = IgsmTokenizer.load(test_dir)
        self.script = {}
        for p in problems_of(test_dir):
            solution, answer = rewrite(p) if rewrite else (p["solution"], p["answer"])
            prompt = tok.prompt_ids(p["problem"])
            self.script[tuple(prompt)] = tok.sample_ids(p["problem"], solution, str(answer))[len(prompt):]
        self.calls = []

    def generate(self, prompts, max_new_tokens, eos_id=None):
        self.calls.append((len(prompts), max_new_tokens, eos_id, self.training))
        return [self.script[tuple(p)][:max_new_tokens] for p in prompts]


class GarbageModel(ScriptedModel):
    def generate(self, prompts, max_new_tokens, eos_id=None):
        self.calls.append((len(prompts), max_new_tokens, eos_id, self.training))
        junk = self.tokenizer.encode("17 times as much as")
        return [(junk * max_new_tokens)[:max_new_tokens] for _ in prompts]


def test_oracle_scores_everything_and_garbage_nothing(igsm_sets):
    test_dir = igsm_sets["test"]
    oracle = ScriptedModel(test_dir)
    records = []
    result = evaluate_igsm(oracle, test_dir, batch_size=5, records=records)
    assert (result["n"], result["answer_correct"], result["solution_correct"]) == (12, 12, 12)
    assert result["answer_accuracy"] == 1.0 and result["solution_accuracy"] == 1.0
    assert result["reasons"] == {"correct": 12}
    assert list(result["by_op"]) == ["3"] and result["by_op"]["3"]["answer_correct"] == 12
    assert [c for c, *_ in oracle.calls] == [5, 5, 2]
    eos = oracle.tokenizer.eos_id
    assert all(e == eos and not training for _, _, e, training in oracle.calls)
    problems = problems_of(test_dir)
    assert [r["index"] for r in records] == list(range(12))
    assert [r["generated_answer"] for r in records] == [p["answer"] for p in problems]
    assert records[0]["generated_solution"] == problems[0]["solution"] and records[0]["reason"] is None
    assert result["decoding"]["strategy"] == "greedy" and result["decoding"]["kv_cache"] is True
    json.dumps(result)

    garbage = GarbageModel(test_dir)
    result = evaluate_igsm(garbage, test_dir, max_new_tokens=6, batch_size=12)
    assert (result["n"], result["answer_correct"], result["solution_correct"]) == (12, 0, 0)
    assert result["reasons"] == {"unparseable": 12}
    assert result["by_op"]["3"]["answer_accuracy"] == 0.0
    assert [budget for _, budget, _, _ in garbage.calls] == [6]


def test_wrong_answers_and_wrong_solutions_are_told_apart(igsm_sets):
    test_dir = igsm_sets["test"]
    problems = problems_of(test_dir)
    # First problem: right solution, wrong answer. Second: only the first solution step
    # (ends on the wrong parameter), right answer. The rest: the reference.
    def rewrite(p):
        if p["problem"] == problems[0]["problem"]:
            return p["solution"], (int(p["answer"]) + 1) % 23
        if p["problem"] == problems[1]["problem"]:
            return p["solution"].split(". ")[0] + ".", p["answer"]
        return p["solution"], p["answer"]

    assert problems[1]["solution"].count(". ") >= 1  # at least two steps to cut
    records = []
    result = evaluate_igsm(ScriptedModel(test_dir, rewrite=rewrite), test_dir, records=records)
    assert (result["answer_correct"], result["solution_correct"]) == (11, 10)
    assert result["reasons"] == {"correct": 10, "wrong answer": 1, "wrong final parameter": 1}
    assert records[0]["reason"].startswith("wrong answer: ")
    assert records[1]["answer_correct"] and not records[1]["solution_correct"]


def test_budget_default_and_context_limit(igsm_sets):
    test_dir = igsm_sets["test"]
    model = ScriptedModel(test_dir)
    tok = model.tokenizer
    problems = problems_of(test_dir)
    evaluate_igsm(model, test_dir, batch_size=12)
    longest = max(len(tok.encode(p["solution"])) + len(tok.encode(p["answer"])) for p in problems)
    assert model.calls[0][1] == 2 * (longest + 2) + 8
    longest_prompt = max(len(tok.prompt_ids(p["problem"])) for p in problems)
    short = ScriptedModel(test_dir, max_seq_len=longest_prompt + 7)
    result = evaluate_igsm(short, test_dir, batch_size=12, max_new_tokens=1000)
    # 7 new tokens at most: every solution is cut before its answer.
    assert short.calls[0][1] == 7 and result["answer_correct"] == 0
    tight = ScriptedModel(test_dir, max_seq_len=longest_prompt)
    with pytest.raises(UserError, match=f"{test_dir}: a prompt of {longest_prompt} tokens leaves no room"):
        evaluate_igsm(tight, test_dir)
    assert tight.calls == []  # refused before any generation


def test_baseline_from_train_or_test_and_limit(igsm_sets):
    test_dir, train_dir = igsm_sets["test"], igsm_sets["train"]
    problems = problems_of(test_dir)
    result = evaluate_igsm(ScriptedModel(test_dir), test_dir, limit=5)
    assert result["n"] == 5 and result["decoding"]["limit"] == 5
    answer, count, _ = most_common_answer(p["answer"] for p in problems[:5])
    assert result["baseline"]["source"] == "test" and result["baseline"]["answer"] == answer
    assert result["baseline"]["hits"] == count and result["baseline"]["rate"] == count / 5
    result = evaluate_igsm(ScriptedModel(test_dir), test_dir, train_dir=train_dir)
    train_counts = Counter(p["answer"] for p in problems_of(train_dir))
    top = max(train_counts.values())
    expected = min(a for a, c in train_counts.items() if c == top)
    assert result["baseline"]["source"] == "train" and result["baseline"]["answer"] == expected
    assert result["baseline"]["source_frequency"] == top / 30
    assert result["baseline"]["hits"] == sum(p["answer"] == expected for p in problems)


def test_same_model_same_result(igsm_sets):
    test_dir = igsm_sets["test"]
    model = ScriptedModel(test_dir)
    one, other = [], []
    first = evaluate_igsm(model, test_dir, batch_size=2, records=one)
    second = evaluate_igsm(model, test_dir, batch_size=7, records=other)
    assert first.pop("decoding")["batch_size"] == 2 and second.pop("decoding")["batch_size"] == 7
    assert first == second and one == other


def test_records_round_trip(igsm_sets, tmp_path):
    records = []
    evaluate_igsm(ScriptedModel(igsm_sets["test"]), igsm_sets["test"], limit=3, records=records)
    write_records(tmp_path / "records.jsonl", records)
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records and len(records) == 3


def test_most_common_answer_ties_and_reason_codes():
    assert most_common_answer([2, "1", 2, 1, 7]) == ("1", 2, 5)
    assert answer_baseline([{"answer": 5}, {"answer": 5}, {"answer": 6}])["rate"] == pytest.approx(2 / 3)
    assert reason_code(None) == "correct"
    assert reason_code("wrong answer: '3', the answer is 4") == "wrong answer"
    assert reason_code("unparseable: problem: x: y") == "unparseable"


def test_bad_test_sets_are_one_line_user_errors(igsm_sets, tmp_path):
    import shutil

    test_dir = igsm_sets["test"]
    model = ScriptedModel(test_dir)
    broken = tmp_path / "broken"
    shutil.copytree(test_dir, broken)
    (broken / "lexicon.json").unlink()
    with pytest.raises(UserError, match="broken: not an iGSM test set: lexicon.json is missing"):
        evaluate_igsm(model, broken)
    with pytest.raises(UserError, match="igsm.batch_size"):
        evaluate_igsm(model, test_dir, batch_size=0)
    with pytest.raises(UserError, match="nothing: not an iGSM set"):
        evaluate_igsm(model, test_dir, train_dir=tmp_path / "nothing")
    bad = tmp_path / "bad"
    shutil.copytree(test_dir, bad)
    (bad / "problems.jsonl").write_text('{"problem": "a"}\n')
    with pytest.raises(UserError, match=r"problems.jsonl:1: problem lacks key\(s\) solution, answer, op"):
        evaluate_igsm(model, bad)


# ---------------------------------------------------------------- compute and one variant result

def tiny_model(schedule=None, vocab_size=40, max_seq_len=48):
    from vld.model import ModelConfig, VLDTransformer

    torch.manual_seed(0)
    return VLDTransformer(ModelConfig(vocab_size=vocab_size, n_layer=2, d_model=16, n_head=2,
                                      max_seq_len=max_seq_len, schedule=schedule).validate())


def test_compute_profile_reports_the_models_own_counts():
    from vld.eval.compute import compute_profile

    model = tiny_model(schedule=[0, 1, 0, 1])
    profile = compute_profile(model, 32)
    assert profile == {
        "params": model.parameter_count(embeddings=True),
        "params_no_embed": model.parameter_count(embeddings=False),
        "base_layers": 2, "effective_depth": 4, "vld": 2, "schedule": [0, 1, 0, 1], "seq_len": 32,
        "flops_per_token": model.flops_per_token(seq_len=32, training=False),
        "flops_per_token_train": model.flops_per_token(seq_len=32, training=True)}
    native = compute_profile(tiny_model(), 32)
    assert native["params"] == profile["params"] and native["vld"] == 0
    assert profile["flops_per_token"] > native["flops_per_token"]
    with pytest.raises(UserError, match="seq_len"):
        compute_profile(model, 0)


@pytest.fixture
def variant_data(igsm_sets, tmp_path):
    from vld.data.knowledge.random_tokens import make_random_tokens

    knowledge = make_random_tokens(k=300, n=40, seed=0, out=tmp_path / "random")
    return {**igsm_sets, "knowledge": knowledge}


def test_reasoning_variant_result_has_the_documented_schema(variant_data, tmp_path):
    from vld.eval.variant import evaluate_variant
    from vld.result_schema import MEASURED_KEYS, SCHEMA, check_result
    from vld.report.build import build_report

    from vld.data.igsm.tokenizer import IgsmTokenizer

    vocab = IgsmTokenizer.load(variant_data["test"]).vocab_size
    model = tiny_model(schedule=[0, 1, 0, 1], vocab_size=vocab, max_seq_len=256)
    result = evaluate_variant(
        model, "reasoning", {"igsm_test": {"op3": variant_data["test"]}, "igsm_train": variant_data["train"]},
        {"seq_len": 16, "max_new_tokens": 4, "depth_windows": 3, "limit": 6},
        {"variant": "r-cycle-x1", "pattern": "cycle", "k": 1, "seed": 3, "train_tokens_per_s": 123.0,
         "group": "smoke"})
    json.dumps(result)
    assert check_result(result, "r") is result and result["schema"] == SCHEMA
    assert set(MEASURED_KEYS) <= set(result)
    assert (result["variant"], result["family"], result["task"], result["pattern"], result["k"], result["seed"]) == \
        ("r-cycle-x1", "reasoning", "igsm", "cycle", 1, 3)
    assert (result["n_layer"], result["effective_depth"], result["vld"], result["native_depth"]) == (2, 4, 2, False)
    assert result["params"] == model.parameter_count() and result["seq_len"] == 16
    assert result["flops_per_token"] == model.flops_per_token(seq_len=16)
    assert result["train_tokens_per_s"] == 123.0 and result["group"] == "smoke" and result["layers"] is None
    op3 = result["igsm"]["op3"]
    assert op3["n"] == 6 and op3["decoding"]["max_new_tokens"] == 4
    assert op3["baseline"]["source"] == "train" and sum(op3["reasons"].values()) == 6
    # Depth probe on the test set's tokens (the default): 4 virtual layers.
    assert [d["base_layer"] for d in result["depth"]] == [0, 1, 0, 1]
    assert result["knowledge"] == {} and result["scores"] == {}
    written = build_report([result], tmp_path / "report", "smoke")
    assert (tmp_path / "report" / "table1.csv") in written


def test_knowledge_variant_and_defaults(variant_data, tmp_path):
    import csv

    from vld.eval.variant import evaluate_variant
    from vld.report.build import build_report

    model = tiny_model()
    result = evaluate_variant(model, "knowledge", {"knowledge": variant_data["knowledge"]},
                              {"seq_len": 32, "depth_windows": 2}, {"variant": "k-base"})
    assert (result["pattern"], result["k"], result["native_depth"]) == ("base", 0, True)
    assert result["igsm"] == {} and len(result["depth"]) == 2
    for key in ("absorbed_bits_entropy", "absorbed_bits_ce"):
        assert isinstance(result["knowledge"][key], float)
    build_report([result], tmp_path / "report", "k")
    with open(tmp_path / "report" / "figure4.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["absorbed bits (cross-entropy)"] == f"{result['knowledge']['absorbed_bits_ce']:.1f}"
    assert row["absorbed bits (paper measure)"] == f"{result['knowledge']['absorbed_bits_entropy']:.1f}"
    none = evaluate_variant(model, "knowledge", {"knowledge": variant_data["knowledge"]},
                            {"seq_len": 32, "depth_windows": 0}, {"variant": "k"})
    assert none["depth"] == []


IGSM = {"igsm_test": {"op2": "/"}}  # a directory: the checks before it pass


@pytest.mark.parametrize("family, data, settings, meta, message", [
    ("", IGSM, {}, {"variant": "v"}, "family: must be a family name"),
    ("reasoning", {}, {}, {"variant": "v"}, "data: needs exactly one of igsm_test or knowledge or khop_test"),
    ("knowledge", {"knowledge": "/", "khop_test": "/"}, {}, {"variant": "v"}, "data: needs exactly one of"),
    ("reasoning", {"igsm_test": {"op2": "/nonexistent/x"}}, {}, {"variant": "v"},
     "data.igsm_test.op2: /nonexistent/x is not a directory"),
    ("reasoning", {"tests": {}}, {}, {"variant": "v"}, "data.tests: unknown key"),
    ("retrofit", IGSM, {"batchsize": 2}, {"variant": "v"}, "settings.batchsize: unknown key"),
    ("retrofit", IGSM, {"limit": 0}, {"variant": "v"}, "settings.limit: must be a positive integer"),
    ("knowledge", {"knowledge": "/"}, {"max_new_tokens": 3}, {"variant": "v"}, "settings.max_new_tokens: unknown key"),
    ("retrofit", IGSM, {}, {}, "meta.variant: every result needs a variant name"),
    ("retrofit", IGSM, {}, {"variant": "v", "params": 3}, "meta.params: is measured"),
    ("retrofit", IGSM, {}, {"variant": "v", "scores": {"x": "high"}}, "meta.scores: must map"),
])
def test_bad_variant_inputs_fail_before_compute(family, data, settings, meta, message):
    from vld.eval.variant import evaluate_variant

    class Untouchable:  # any use of the model would raise AttributeError, not UserError
        pass

    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        evaluate_variant(Untouchable(), family, data, settings, meta)
