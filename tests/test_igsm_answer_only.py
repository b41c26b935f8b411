"""The answer-only iGSM objective: training rows against a slow reference built from the problems'
text, the loss on the answer alone, a sample that does not fit failing before any compute,
answer-only evaluation (oracle, garbage, a solution-writing model), and the params it reads."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from igsm_sets import igsm_train_and_test
from vld.data.igsm.objectives import NO_LABEL, AnswerOnlyRows
from vld.data.igsm.tokenizer import EOS, PAD, SEP, IgsmTokenizer
from vld.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def igsm_sets(tmp_path_factory):
    return igsm_train_and_test(tmp_path_factory.mktemp("igsm_answer_only"), 40, 10, test_op=3)


def problems_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "problems.jsonl").read_text().splitlines()]


def reference_row(tokenizer, problem: dict, seq_len: int) -> tuple[list[int], list[int]]:
    """From the text, position by position: inputs are problem <sep> answer <eos> but the last
    token, padded; a position is labelled with the next token when that token is in the answer."""
    question = tokenizer.encode(problem["problem"])
    answer = tokenizer.encode(problem["answer"]) + [EOS]
    sample = question + [SEP] + answer
    inputs, labels = [], []
    for t in range(seq_len):
        inputs.append(sample[t] if t < len(sample) - 1 else PAD)
        target = t + 1
        labels.append(sample[target] if len(question) < target < len(sample) else NO_LABEL)
    return inputs, labels


def longest_sample(tokenizer, problems) -> int:
    return max(len(tokenizer.encode(p["problem"])) + 1 + len(tokenizer.encode(p["answer"])) + 1 for p in problems)


def test_rows_equal_a_reference_built_from_the_text(igsm_sets):
    tokenizer = IgsmTokenizer.load(igsm_sets["train"])
    problems = problems_of(igsm_sets["train"])
    seq_len = longest_sample(tokenizer, problems) - 1 + 5  # the longest fits with room to pad
    rows = AnswerOnlyRows(igsm_sets["train"], seq_len, "here")
    assert len(rows) == len(problems) == 40
    for i, problem in enumerate(problems):
        inputs, labels = rows.row(i)
        assert inputs.dtype == labels.dtype == "int64" and inputs.shape == labels.shape == (seq_len,)
        assert (inputs.tolist(), labels.tolist()) == reference_row(tokenizer, problem, seq_len), i
        # the answer and its <eos> are the only targets; no solution token is ever seen
        kept = [label for label in labels.tolist() if label != NO_LABEL]
        assert tokenizer.decode(kept[:-1]) == problem["answer"] and kept[-1] == EOS
        assert tokenizer.decode([x for x in inputs.tolist() if x != PAD]).count(problem["solution"][:30]) == 0
    # a loader worker's copy carries the offsets, not the tokens, and gives the same rows
    import pickle

    worker = pickle.loads(pickle.dumps(rows))
    assert worker._tokens is None
    for i in (0, 17, 39):
        assert [a.tolist() for a in worker.row(i)] == [a.tolist() for a in rows.row(i)]


def test_a_problem_that_does_not_fit_fails_before_any_compute(igsm_sets):
    from vld.train.datamodules import AnswerOnlyDataModule

    tokenizer = IgsmTokenizer.load(igsm_sets["train"])
    longest = longest_sample(tokenizer, problems_of(igsm_sets["train"]))
    AnswerOnlyRows(igsm_sets["train"], longest - 1, "w")  # exactly fits
    where = "reasoning.variants.ao.train.seq_len"
    with pytest.raises(UserError, match=rf"^{where}: the longest problem <sep> answer <eos> has {longest} tokens: "
                                        rf"the answer_only objective needs seq_len >= {longest - 1}, got {longest - 2}$"):
        AnswerOnlyDataModule(igsm_sets["train"], longest - 2, 4, where=where)


def test_the_loss_is_the_mean_over_answer_positions_only(igsm_sets):
    from vld.model import ModelConfig, VLDTransformer
    from vld.train.datamodules import AnswerOnlyDataModule
    from vld.train.module import next_token_loss, unpack_batch

    tokenizer = IgsmTokenizer.load(igsm_sets["train"])
    seq_len = longest_sample(tokenizer, problems_of(igsm_sets["train"]))
    module = AnswerOnlyDataModule(igsm_sets["train"], seq_len, 4)
    items = [module.problems[(0, i)] for i in (3, 0, 7)]
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    torch.manual_seed(0)
    model = VLDTransformer(ModelConfig(vocab_size=tokenizer.vocab_size, n_layer=2, d_model=16, n_head=2,
                                       max_seq_len=seq_len).validate())
    inputs, targets, mask = unpack_batch(batch)
    logits = model(inputs)
    loss = next_token_loss(logits, targets, mask)
    terms = []
    for b in range(len(items)):
        for t in range(seq_len):
            label = int(batch["labels"][b, t])
            if label != NO_LABEL:
                terms.append(-torch.log_softmax(logits[b, t].double(), -1)[label].item())
    assert len(terms) == sum(len(tokenizer.encode(problems_of(igsm_sets["train"])[i]["answer"])) + 1 for i in (3, 0, 7))
    assert math.isclose(loss.item(), sum(terms) / len(terms), rel_tol=1e-5)
    # logits at unlabelled positions do not enter the loss
    noisy = logits.detach().clone()
    noisy[~mask] += 100 * torch.randn_like(noisy[~mask])
    assert math.isclose(next_token_loss(noisy, targets, mask).item(), loss.item(), rel_tol=1e-6)


# ---------------------------------------------------------------- evaluation

class AnswerScript(torch.nn.Module):
    """Continues each prompt with a scripted continuation (prompt ids -> ids)."""

    def __init__(self, test_dir: Path, continuation):
        super().__init__()
        import types

        self.config = types.SimpleNamespace(max_seq_len=512)
        tokenizer = IgsmTokenizer.load(test_dir)
        self.script = {tuple(tokenizer.prompt_ids(p["problem"])): continuation(tokenizer, p) for p in problems_of(test_dir)}
        self.budgets = []

    def generate(self, prompts, max_new_tokens, eos_id=None):
        self.budgets.append(max_new_tokens)
        return [self.script[tuple(p)][:max_new_tokens] for p in prompts]


def test_answer_only_evaluation_judges_the_answer_alone(igsm_sets):
    from vld.eval.igsm import evaluate_igsm

    test = igsm_sets["test"]
    problems = problems_of(test)
    oracle = AnswerScript(test, lambda tok, p: tok.encode(p["answer"]) + [EOS])
    result = evaluate_igsm(oracle, test, objective="answer_only")
    assert (result["n"], result["answer_correct"], result["answer_accuracy"]) == (10, 10, 1.0)
    assert result["solution_correct"] is None and result["solution_accuracy"] is None
    assert result["reasons"] == {"correct": 10} and result["objective"] == "answer_only"
    assert result["by_op"]["3"]["solution_accuracy"] is None
    tokenizer = IgsmTokenizer.load(test)
    longest_answer = max(len(tokenizer.encode(p["answer"])) for p in problems)
    assert result["decoding"]["max_new_tokens"] == 2 * (longest_answer + 1) + 8 == oracle.budgets[0]

    off_by_one = AnswerScript(test, lambda tok, p: tok.encode(str(int(p["answer"]) + 1)) + [EOS])
    wrong = evaluate_igsm(off_by_one, test, objective="answer_only")
    assert wrong["answer_correct"] == 0 and wrong["reasons"] == {"wrong answer": 10}

    # a model that writes its solution first answers nothing under answer_only, all under solution
    writer = AnswerScript(test, lambda tok, p: tok.sample_ids(p["problem"], p["solution"], p["answer"])[
        len(tok.prompt_ids(p["problem"])):])
    assert evaluate_igsm(writer, test, max_new_tokens=400, objective="answer_only")["answer_correct"] == 0
    solution = evaluate_igsm(writer, test, max_new_tokens=400)
    assert solution["answer_correct"] == solution["solution_correct"] == 10 and solution["objective"] == "solution"
    with pytest.raises(UserError, match="^igsm.objective: unknown objective 'answers'"):
        evaluate_igsm(oracle, test, objective="answers")


def test_report_keeps_answer_only_variants_apart():
    from vld.report.claims import claim_verdicts
    from vld.report.tables import table1

    def result(name, pattern, k, objective, correct):
        cell = {"n": 200, "answer_correct": correct, "solution_correct": None if objective == "answer_only" else correct,
                "baseline": {"rate": 0.05, "source": "train"}}
        return {"variant": name, "family": "reasoning", "task": "igsm", "pattern": pattern, "k": k, "layers": None,
                "n_layer": 2, "d_model": 64, "effective_depth": 2 * (k + 1), "native_depth": k == 0,
                "train_steps": 100, "objective": objective, "igsm": {"op3": cell}}

    # three seeds of each answer-only variant: enough for a directional verdict (docs/report.md#claims)
    results = [result("base", "base", 0, "solution", 60), result("cycle_x1", "cycle", 1, "solution", 60)]
    results += [result(f"ao_s{seed}", "base", 0, "answer_only", 40) for seed in range(3)]
    results += [result(f"ao_cycle_x1_s{seed}", "cycle", 1, "answer_only", 120) for seed in range(3)]
    rows = {row[0]: row for row in table1(results).rows}
    assert {"base", "cycle", "base (answer only)", "cycle (answer only)"} <= set(rows)
    assert rows["cycle (answer only)"][2].startswith("60.0") and rows["cycle"][2].startswith("30.0")
    claim2 = {v.family: v for v in claim_verdicts(results) if v.claim == "2"}
    assert set(claim2) == {"reasoning", "reasoning_answer_only"}
    assert claim2["reasoning"].effect.value == pytest.approx(0.0)  # 60 vs 60 of 200
    assert claim2["reasoning_answer_only"].effect.value == pytest.approx(0.4)  # 120 vs 40 of 200
    assert claim2["reasoning_answer_only"].verdict == "supported"


# ---------------------------------------------------------------- params

def tiny_raw() -> dict:
    from vld.pipeline import params as P

    return P.load_yaml(ROOT / "conf/profiles/tiny.yaml")


def test_objective_is_a_checked_variant_key_that_retrofit_inherits():
    from vld.pipeline import params as P

    raw = tiny_raw()
    raw["retrofit"]["variants"]["from_ao"] = {"source": "answer_only", "schedule": {"pattern": "cycle", "k": 1}}
    pipeline = P.validate(raw, "params.yaml")
    assert pipeline.variant("reasoning", "answer_only").objective == "answer_only"
    assert pipeline.variant("reasoning", "base").objective == "solution"  # the default
    assert pipeline.variant("retrofit", "from_ao").objective == "answer_only"
    assert pipeline.variant("reasoning", "answer_only").fingerprint() != pipeline.variant("reasoning", "base").fingerprint()
    assert "objective" not in pipeline.variant("khop", "base").to_dict()
    from vld.pipeline.families import FAMILIES

    assert FAMILIES["reasoning"].eval_settings(pipeline.variant("reasoning", "answer_only"))["objective"] == "answer_only"

    for edit, message in [
        (lambda r: r["reasoning"]["variants"]["answer_only"].update(objective="answers"),
         "reasoning.variants.answer_only.objective: unknown objective 'answers' (known: solution, answer_only)"),
        (lambda r: r["reasoning"]["eval"].update(objective="answer_only"),
         "reasoning.eval.objective: is set per variant (how it was trained): move it to each variant"),
        (lambda r: r["knowledge"]["variants"]["w16"].update(objective="answer_only"),
         "knowledge.variants.w16.objective: unknown key"),
    ]:
        bad = copy.deepcopy(tiny_raw())
        edit(bad)
        with pytest.raises(UserError) as info:
            P.validate(bad, "params.yaml")
        assert str(info.value).startswith(message), str(info.value)
