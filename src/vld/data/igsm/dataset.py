"""Generate an iGSM data set: problems, their tokens, and the files beside them.

Problems are generated in chunks of CHUNK; chunk c draws from its own seed
(SeedSequence(seed, spawn_key=(c,))), so the bytes written depend only on the seed and the
request, never on the number of workers. Workers are forked processes.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
from pathlib import Path

import numpy as np

from vld.atomic import check_replaceable
from vld.data.igsm.generator import Generator, IgsmConfig, light_op
from vld.data.igsm.tokenizer import EOS, SEP, IgsmTokenizer
from vld.data.tokens import write_token_set
from vld.errors import fail

CHUNK = 500
SPLITS = ("train", "test")
FORMAT_VERSION = 1

_STATE: dict = {}  # set in the parent before forking; read by chunk workers


def validate_request(cfg: IgsmConfig, split: str, n, seed, out, workers=None, op=None) -> None:
    """Every check of a request, before any compute (one-line UserErrors)."""
    cfg.validate("igsm")
    if split not in SPLITS:
        fail("split", f"must be train or test, not {split!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        fail("n", f"must be a positive integer, not {n!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        fail("seed", f"must be a non-negative integer, not {seed!r}")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        fail("workers", f"must be a positive integer, not {workers!r}")
    if op is not None:
        cfg.check_op(op, "op")
        if op == 1 and split == "test":  # its one template ("so a = 0") is in training bin 0
            fail("op", "op 1 has a single solution template, a training one: no test set exists at op 1")
    check_replaceable(out)


def chunk_seed(seed: int, chunk: int) -> int:
    state = np.random.SeedSequence(seed, spawn_key=(chunk,)).generate_state(4, dtype=np.uint32)
    return int.from_bytes(state.tobytes(), "little")


def _generate_chunk(task):
    chunk, count = task
    st = _STATE
    gen: Generator = st["generator"]
    tok: IgsmTokenizer = st["tokenizer"]
    op_fixed, split, max_op = st["op"], st["split"], gen.cfg.max_op
    rng = random.Random(chunk_seed(st["seed"], chunk))
    encode = tok.encode
    restarts, rejects = gen.restarts, gen.bin_rejects
    ids: list[int] = []
    lengths, prompt_lengths, ops, bins, lines = [], [], [], [], []
    dumps = json.dumps
    for _ in range(count):
        op = op_fixed if op_fixed is not None else light_op(rng, max_op)
        P = gen.make(rng, op, split)
        answer = str(P.answer)
        sample = encode(P.text)
        sample.append(SEP)
        prompt_lengths.append(len(sample))  # the evaluation prompt: problem <sep>
        sample += encode(P.solution)
        sample.append(SEP)
        sample += encode(answer)
        sample.append(EOS)
        ids += sample
        lengths.append(len(sample))
        ops.append(P.op)
        bins.append(P.template_bin)
        lines.append(dumps({"problem": P.text, "question": P.question, "solution": P.solution, "answer": answer, "op": P.op, "template_bin": P.template_bin}))
    lines.append("")
    return (
        np.asarray(ids, dtype=np.uint16).tobytes(),
        np.asarray(lengths, dtype=np.int64),
        np.asarray(prompt_lengths, dtype=np.int64),
        ops,
        bins,
        "\n".join(lines).encode(),
        gen.restarts - restarts,
        gen.bin_rejects - rejects,
    )


def _run_chunks(tasks: list[tuple[int, int]], workers: int, desc: str, progress: bool) -> list:
    """_generate_chunk of every (chunk, count) task, in order, in `workers` forked processes."""
    from tqdm import tqdm

    bar = tqdm(total=sum(count for _, count in tasks), desc=desc, unit="problem",
               disable=None if progress else True, leave=False)
    results = []
    try:
        if workers == 1:
            for task in tasks:
                results.append(_generate_chunk(task))
                bar.update(task[1])
        else:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for task, res in zip(tasks, pool.imap(_generate_chunk, tasks)):
                    results.append(res)
                    bar.update(task[1])
    finally:
        bar.close()
    return results


def _stats(lengths: np.ndarray) -> dict:
    return {
        "mean": round(float(lengths.mean()), 2),
        "p50": int(np.percentile(lengths, 50)),
        "p99": int(np.percentile(lengths, 99)),
        "max": int(lengths.max()),
        "min": int(lengths.min()),
    }


def generate_dataset(
    cfg: IgsmConfig,
    split: str,
    n: int,
    seed: int,
    out: str | os.PathLike,
    workers: int | None = None,
    op: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate `n` problems of `split` (op fixed if given, else the light law) into `out`.

    Writes (atomically) a token set (tokens.npy, index.npy, meta.json), tokenizer.json,
    problems.jsonl and lexicon.json. Returns the output path."""
    validate_request(cfg, split, n, seed, out, workers, op)
    lexicon = cfg.lexicon()
    tokenizer = IgsmTokenizer.from_lexicon(lexicon)
    generator = Generator(cfg, lexicon)
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    tasks = [(c, min(CHUNK, n - c * CHUNK)) for c in range((n + CHUNK - 1) // CHUNK)]
    workers = max(1, min(workers, len(tasks)))
    _STATE.update(generator=generator, tokenizer=tokenizer, op=op, split=split, seed=seed)
    try:
        results = _run_chunks(tasks, workers, f"igsm {split}", progress)
    finally:
        _STATE.clear()
    tokens = np.frombuffer(b"".join(r[0] for r in results), dtype=np.uint16)
    lengths = np.concatenate([r[1] for r in results])
    index = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=index[1:])
    prompt_lengths = np.concatenate([r[2] for r in results])
    ops = np.asarray([o for r in results for o in r[3]])
    bins = np.asarray([b for r in results for b in r[4]])
    restarts = sum(r[6] for r in results)
    rejects = sum(r[7] for r in results)
    problems = bytearray()
    for r in results:
        problems += r[5]
    del results
    meta = {
        "generator": "vld.data.igsm",
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "split": split,
        "op": op,
        "op_law": "fixed" if op is not None else "light",
        "n": n,
        "seed": seed,
        "chunk_size": CHUNK,
        "sample_layout": "problem <sep> solution <sep> answer <eos>",
        "special_ids": {"pad": tokenizer.pad_id, "sep": tokenizer.sep_id, "eos": tokenizer.eos_id, "unk": tokenizer.unk_id},
        "token_length": _stats(lengths),
        # evaluation prompts (problem <sep>): the validator checks models' contexts against the longest
        "prompt_length": _stats(prompt_lengths),
        "op_histogram": {str(k): int(v) for k, v in zip(*np.unique(ops, return_counts=True))},
        "template_bins": {str(k): int(v) for k, v in zip(*np.unique(bins, return_counts=True))},
        # dead ends rebuilt (structure) and problems rebuilt for the template split, per set
        "construction": {"structural_restarts": int(restarts), "template_bin_rejects": int(rejects)},
    }
    write_token_set(
        out,
        tokens,
        index,
        tokenizer.vocab_size,
        meta,
        tokenizer=tokenizer.to_dict(),
        extra_files={"problems.jsonl": problems, "lexicon.json": lexicon.to_json().encode()},
    )
    return Path(out)
