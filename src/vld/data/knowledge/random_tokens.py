"""High-entropy random tokens: one fixed sequence of k tokens drawn IID uniformly from n values.

The vocabulary is the numbers 0..n-1 themselves ("numbers are tokens"): token id i *is* the
number i, so there is nothing to tokenize. The dataset holds exactly k*log2(n) bits.

    python -m vld.data.knowledge.random_tokens --k 640000 --n 50257 --seed 0 --out DIR

The token set has one sample, the whole sequence; training and evaluation cut windows over
it with `vld.data.tokens.packed_windows` / `vld.eval.knowledge.eval_windows` (docs/knowledge.md).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from vld.atomic import check_replaceable
from vld.data.tokens import write_token_set
from vld.errors import fail, run_cli

GENERATOR = "vld.data.knowledge.random_tokens"


def validate(k: int, n: int, seed: int, prefix: str = "") -> None:
    """One-line UserError for impossible parameters, before any compute (`prefix` locates
    the keys, e.g. "data.knowledge.rt16k.")."""
    for key, value in (("k", k), ("n", n), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            fail(prefix + key, f"must be an integer, got {value!r}")
    if k < 1:
        fail(prefix + "k", f"must be >= 1 (number of tokens), got {k}")
    if n < 2:
        fail(prefix + "n", f"must be >= 2 (a 1-value vocabulary holds no information), got {n}")
    if n > 2**32:
        fail(prefix + "n", f"must be <= 2**32 (token ids are stored as uint32), got {n}")
    if seed < 0:
        fail(prefix + "seed", f"must be >= 0, got {seed}")


def random_tokens(k: int, n: int, seed: int) -> np.ndarray:
    """The sequence itself (int64), the same for the same (k, n, seed) on every machine."""
    validate(k, n, seed)
    return np.random.Generator(np.random.PCG64(seed)).integers(0, n, size=k, dtype=np.int64)


def numbers_tokenizer(n: int) -> dict:
    # The vocabulary is implicit: listing 50k strings "0".."n-1" would add nothing.
    return {
        "type": "numbers",
        "vocab_size": n,
        "description": f"token id i is the number i, for i in 0..{n - 1}; decode(i) = str(i)",
        "special_tokens": {},
    }


def make_random_tokens(k: int, n: int, seed: int, out: str | Path) -> Path:
    """Write the random-token set to `out` (atomically) and return its path."""
    validate(k, n, seed)
    check_replaceable(out)
    tokens = random_tokens(k, n, seed)
    meta = {
        "generator": GENERATOR,
        "params": {"k": int(k), "n": int(n), "seed": int(seed)},
        "dataset_bits": k * math.log2(n),
        "bits_per_token": math.log2(n),
    }
    return write_token_set(out, tokens, np.array([0, k], dtype=np.int64), n, meta, numbers_tokenizer(n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vld.data.knowledge.random_tokens", description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=640_000, help="number of tokens (paper: 640000)")
    parser.add_argument("--n", type=int, default=50_257, help="number of distinct values = vocabulary size (paper: 50257)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="output directory (a token set)")
    args = parser.parse_args(argv)
    path = make_random_tokens(args.k, args.n, args.seed, args.out)
    print(f"wrote {path}: k={args.k} tokens over n={args.n} values, {args.k * math.log2(args.n):.1f} bits")
    return 0


if __name__ == "__main__":
    run_cli(main)
