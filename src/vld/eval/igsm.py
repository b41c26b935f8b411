"""iGSM accuracy of a model: greedy decoding through the KV cache, judged by the iGSM judge.

`evaluate_igsm(model, test_dir)` returns one JSON-serialisable dict per test set (schema in
the docstring and in docs/report.md). Per-problem records are handed back through the
`records` list if the caller wants them (write them with `write_records`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from vld.errors import fail

REQUIRED_FILES = ("problems.jsonl", "tokenizer.json", "lexicon.json")
PROBLEM_KEYS = ("problem", "solution", "answer", "op")


def _answer_key(answer) -> str:
    """Answers compare as trimmed strings, so 7 and "7" are the same answer."""
    return str(answer).strip()


def read_problems(path: str | Path, where: str) -> list[dict]:
    """Read a problems.jsonl file; a missing file or bad line is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        fail(where, f"{path} does not exist")
    problems = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                fail(f"{path}:{line_no}", f"not valid JSON ({err.msg})")
            missing = [key for key in PROBLEM_KEYS if key not in record]
            if missing:
                fail(f"{path}:{line_no}", f"problem lacks key(s) {', '.join(missing)}")
            problems.append(record)
    if not problems:
        fail(where, f"{path} holds no problems")
    return problems


def most_common_answer(answers: Iterable) -> tuple[str, int, int]:
    """(answer, its count, total) of the most frequent answer; ties go to the smallest string."""
    counts = Counter(_answer_key(a) for a in answers)
    if not counts:
        raise ValueError("most_common_answer: no answers")
    answer = min(counts, key=lambda a: (-counts[a], a))
    return answer, counts[answer], sum(counts.values())


def _train_answers(train_dir: Path) -> Iterable:
    # Streamed: a train set can hold 500K problems; only the answers are needed.
    path = train_dir / "problems.jsonl"
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if line.strip():
                try:
                    yield json.loads(line)["answer"]
                except (json.JSONDecodeError, KeyError):
                    fail(f"{path}:{line_no}", "not a problem record with an 'answer'")


def answer_baseline(test_problems: list[dict], train_dir: str | Path | None = None) -> dict:
    """The rate of always giving the most common answer, scored on the test problems.

    The answer is the most frequent one of the train set when `train_dir` is given
    (source "train"), else of the test set itself (source "test", an optimistic baseline).
    """
    if train_dir is not None:
        answer, count, total = most_common_answer(_train_answers(Path(train_dir)))
        source = "train"
    else:
        answer, count, total = most_common_answer(p["answer"] for p in test_problems)
        source = "test"
    hits = sum(_answer_key(p["answer"]) == answer for p in test_problems)
    return {
        "answer": answer,
        "source": source,
        "source_frequency": count / total,
        "hits": hits,
        "n": len(test_problems),
        "rate": hits / len(test_problems),
    }


def reason_code(reason) -> str:
    """The judge's reason without its detail: "<code>: <detail>" -> "<code>"; None (both
    right) -> "correct". Counts of codes stay small; records keep the full reason."""
    if reason is None:
        return "correct"
    return str(reason).split(":", 1)[0].strip() or str(reason)


def _empty_counts() -> dict:
    return {"n": 0, "answer_correct": 0, "solution_correct": 0, "reasons": Counter()}


def _finish_counts(counts: dict, answer_only: bool = False) -> dict:
    n = counts["n"]
    solutions = not answer_only  # an answer-only model writes no solution: nothing to count
    return {
        "n": n,
        "answer_correct": counts["answer_correct"],
        "solution_correct": counts["solution_correct"] if solutions else None,
        "answer_accuracy": counts["answer_correct"] / n if n else None,
        "solution_accuracy": counts["solution_correct"] / n if n and solutions else None,
        "reasons": dict(sorted(counts["reasons"].items())),
    }


def score_problems(
    problems: list[dict],
    generate: Callable[[list[list[int]], int], list[list[int]]],
    tokenizer,
    judge: Callable,
    lexicon,
    max_new_tokens: int,
    batch_size: int = 32,
    context_len: int | None = None,
    records: list | None = None,
    progress: bool | None = None,
    where: str = "igsm",
    answer_only: bool = False,
) -> dict:
    """Generate and judge every problem; the model-independent core of `evaluate_igsm`.

    `generate(prompts, max_new_tokens)` returns one continuation per prompt. Problems run in
    batches sorted by prompt length (stable), so the result is the same for a given model.
    `answer_only`: continuations are answer <eos> (objective answer_only), judged by the
    answer alone (solution None); solution counts are None.
    """
    from tqdm import tqdm

    prompts = [list(tokenizer.prompt_ids(p["problem"])) for p in problems]
    order = sorted(range(len(problems)), key=lambda i: len(prompts[i]))
    totals = _empty_counts()
    by_op: dict[int, dict] = {}
    per_problem: dict[int, dict] = {}
    # disable=None: tqdm shows the bar only on a terminal.
    disable = None if progress is None else not progress
    if context_len is not None and problems:
        # Checked before any generation: the longest prompt must leave room for one token.
        longest = max(len(p) for p in prompts)
        if context_len - longest <= 0:
            fail(where, f"a prompt of {longest} tokens leaves no room to generate within the "
                        f"model's context of {context_len}")
    with tqdm(total=len(problems), desc="iGSM eval", unit="problem", disable=disable) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            budget = max_new_tokens
            if context_len is not None:
                longest = max(len(prompts[i]) for i in batch)
                budget = min(budget, context_len - longest)
            outputs = generate([prompts[i] for i in batch], budget)
            if len(outputs) != len(batch):
                raise RuntimeError(f"generate returned {len(outputs)} continuations for "
                                   f"{len(batch)} prompts")
            for i, ids in zip(batch, outputs):
                problem = problems[i]
                if answer_only:
                    solution_text, answer_text = None, tokenizer.split_answer_only(list(ids))
                else:
                    solution_text, answer_text = tokenizer.split_generation(list(ids))
                verdict = judge(problem["problem"], solution_text, answer_text, lexicon)
                op = int(problem["op"])
                for counts in (totals, by_op.setdefault(op, _empty_counts())):
                    counts["n"] += 1
                    counts["answer_correct"] += bool(verdict.answer_correct)
                    counts["solution_correct"] += bool(verdict.solution_correct)
                    counts["reasons"][reason_code(verdict.reason)] += 1
                if records is not None:
                    per_problem[i] = {
                        "index": i,
                        "op": op,
                        "template_bin": problem.get("template_bin"),
                        "answer": _answer_key(problem["answer"]),
                        "generated_answer": answer_text,
                        "generated_solution": solution_text,
                        "generated_tokens": len(ids),
                        "answer_correct": bool(verdict.answer_correct),
                        "solution_correct": None if answer_only else bool(verdict.solution_correct),
                        "reason": None if verdict.reason is None else str(verdict.reason),
                    }
            bar.update(len(batch))
    if records is not None:
        records.extend(per_problem[i] for i in range(len(problems)))
    result = _finish_counts(totals, answer_only)
    result["by_op"] = {str(op): _finish_counts(c, answer_only) for op, c in sorted(by_op.items())}
    return result


def evaluate_igsm(
    model,
    test_dir: str | Path,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    train_dir: str | Path | None = None,
    records: list | None = None,
    progress: bool | None = None,
    objective: str = "solution",
) -> dict:
    """Answer and solution accuracy of `model` on the iGSM test set in `test_dir`.

    Greedy decoding through the KV cache (`model.generate`), prompt = problem + <sep>, judged
    by `vld.data.igsm.judge.judge`. `limit` keeps the first `limit` problems. The default
    `max_new_tokens` is twice the longest reference continuation (solution <sep> answer <eos>)
    of the test set plus 8, and generation never runs past the model's `max_seq_len`.
    `objective` is how the model was trained (vld.data.igsm.objectives): an answer_only model
    writes answer <eos> after the prompt, is judged on its answer alone, and its solution
    accuracy is None.

    Returns (JSON-serialisable):
      test_dir, n, answer_correct, solution_correct, answer_accuracy, solution_accuracy
      (fractions), reasons {judge reason code: count} ("correct" when both are right, else the
      code before the judge's ":", e.g. "wrong answer", "unparseable"),
      by_op {"<op>": same counts per op},
      baseline {answer, source "train"|"test", source_frequency, hits, n, rate}: the rate of
      always giving the most common answer (of the train set if `train_dir`, else the test set),
      decoding {"strategy": "greedy", "kv_cache": true, max_new_tokens, batch_size, limit},
      objective.
    When `records` is a list, one dict per problem (test-set order) is appended to it.
    """
    test_dir = Path(test_dir)
    _check_arguments(test_dir, train_dir, batch_size, limit, max_new_tokens)
    from vld.data.igsm.objectives import check_objective

    answer_only = check_objective(objective, "igsm.objective") == "answer_only"

    from vld.data.igsm.judge import judge
    from vld.data.igsm.lexicon import Lexicon
    from vld.data.igsm.tokenizer import IgsmTokenizer

    problems = read_problems(test_dir / "problems.jsonl", str(test_dir))
    if limit is not None:
        problems = problems[:limit]
    tokenizer = IgsmTokenizer.load(test_dir)
    lexicon = Lexicon.load(test_dir / "lexicon.json")
    if max_new_tokens is None:
        max_new_tokens = _default_max_new_tokens(problems, tokenizer, answer_only)

    import torch

    config = getattr(model, "config", None)
    context_len = getattr(config, "max_seq_len", None)
    eos_id = tokenizer.eos_id
    from vld.model import eval_mode

    with eval_mode(model), torch.inference_mode():
        result = score_problems(
            problems,
            lambda prompts, budget: model.generate(prompts, max_new_tokens=budget, eos_id=eos_id),
            tokenizer, judge, lexicon, max_new_tokens, batch_size=batch_size,
            context_len=context_len, records=records, progress=progress, where=str(test_dir),
            answer_only=answer_only)
    result = {"test_dir": str(test_dir), "objective": objective, **result}
    result["baseline"] = answer_baseline(problems, train_dir)
    result["decoding"] = {"strategy": "greedy", "kv_cache": True, "max_new_tokens": max_new_tokens,
                          "batch_size": batch_size, "limit": limit}
    return result


def _check_arguments(test_dir: Path, train_dir, batch_size: int, limit, max_new_tokens) -> None:
    """evaluate_igsm's arguments, before any compute: one line naming what is wrong."""
    for name in REQUIRED_FILES:
        if not (test_dir / name).is_file():
            fail(str(test_dir), f"not an iGSM test set: {name} is missing")
    if train_dir is not None and not (Path(train_dir) / "problems.jsonl").is_file():
        fail(str(train_dir), "not an iGSM set: problems.jsonl is missing")
    if batch_size < 1:
        fail("igsm.batch_size", f"must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        fail("igsm.limit", f"must be >= 1, got {limit}")
    if max_new_tokens is not None and max_new_tokens < 1:
        fail("igsm.max_new_tokens", f"must be >= 1, got {max_new_tokens}")


def _default_max_new_tokens(problems: list[dict], tokenizer, answer_only: bool) -> int:
    """What the longest reference continuation (solution <sep> answer <eos>, or answer <eos>
    for answer_only) needs, twice, and a margin."""
    longest = max((0 if answer_only else len(tokenizer.encode(p["solution"])) + 1)
                  + len(tokenizer.encode(str(p["answer"]))) + 1 for p in problems)
    return 2 * longest + 8


def write_records(path: str | Path, records: list[dict]) -> None:
    """Write per-problem records as JSON lines, atomically."""
    from vld.atomic import write_text

    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
