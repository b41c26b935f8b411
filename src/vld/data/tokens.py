"""The on-disk token store every dataset uses, and fixed-length training windows over it.

A token set is a directory:

    tokens.npy      flat array of token ids (uint16 when the vocabulary fits, else uint32),
                    memory-mapped at training time so a run never re-tokenizes
    index.npy       int64 offsets, shape (n_samples + 1,): sample i is tokens[index[i]:index[i+1]]
    meta.json       what made it (generator, params, seed), sizes, vocab_size and a sha256 of tokens
    tokenizer.json  the vocabulary, written beside the data so model and data always agree

Windows: `packed_windows` cuts the flat array into windows of `seq_len + 1` tokens
(inputs and next-token targets) with a given stride and starting offset.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vld.atomic import atomic_dir
from vld.errors import fail

TOKENS, INDEX, META, TOKENIZER = "tokens.npy", "index.npy", "meta.json", "tokenizer.json"


def read_json(path: str | Path, what: str, name_in_dir: str | None = None) -> tuple[Path, Any]:
    """Read a JSON file given by the user (or the `name_in_dir` file of a data directory);
    a missing or unreadable file is a one-line UserError naming it."""
    path = Path(path)
    if name_in_dir is not None and path.is_dir():
        path = path / name_in_dir
    try:
        return path, json.loads(path.read_text())
    except FileNotFoundError:
        fail(str(path), f"{what} file not found")
    except (OSError, ValueError) as err:
        fail(str(path), f"unreadable {what} ({err.__class__.__name__})")


def recorded_sha256(path: str | Path) -> str:
    """The content hash a token set records in its meta.json ("unknown" without one)."""
    meta = Path(path) / META
    try:
        return str(json.loads(meta.read_text()).get("tokens_sha256", "unknown"))
    except (OSError, ValueError):
        return "unknown"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def sha256_of(array: np.ndarray) -> str:
    """sha256 of the array's bytes, read in chunks (a memory-mapped array is not copied whole)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    digest = hashlib.sha256()
    step = max(1, (16 << 20) // max(1, flat.itemsize))
    for lo in range(0, len(flat), step):
        digest.update(memoryview(np.ascontiguousarray(flat[lo : lo + step])).cast("B"))
    return digest.hexdigest()


# (path, size, mtime, inode) of tokens.npy files whose content matched meta.json in this process
_VERIFIED: set[tuple] = set()


def write_token_set(
    out_dir: str | Path,
    tokens: np.ndarray,
    index: np.ndarray,
    vocab_size: int,
    meta: dict[str, Any],
    tokenizer: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """Write a token set atomically (the whole directory appears at once or not at all)."""
    tokens = np.asarray(tokens).astype(token_dtype(vocab_size), copy=False)
    index = np.asarray(index, dtype=np.int64)
    if index.ndim != 1 or index[0] != 0 or index[-1] != len(tokens) or np.any(np.diff(index) < 0):
        raise ValueError("index must be non-decreasing offsets from 0 to len(tokens)")
    if len(tokens) and int(tokens.max()) >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} outside vocabulary of {vocab_size}")
    full_meta = dict(meta)
    full_meta.update(
        n_samples=int(len(index) - 1),
        n_tokens=int(len(tokens)),
        vocab_size=int(vocab_size),
        dtype=str(tokens.dtype),
        tokens_sha256=sha256_of(tokens),
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / TOKENS, tokens)
        np.save(tmp / INDEX, index)
        (tmp / META).write_text(json.dumps(full_meta, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            (tmp / TOKENIZER).write_text(json.dumps(tokenizer, indent=1, sort_keys=True) + "\n")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return out_dir


@dataclass
class TokenSet:
    """A token set opened for reading; tokens are memory-mapped."""

    path: Path
    tokens: np.ndarray
    index: np.ndarray
    meta: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path, verify_hash: bool | None = None) -> "TokenSet":
        """Open and validate; a missing, truncated or altered file is a one-line UserError.

        verify_hash: check tokens.npy against meta.json's tokens_sha256 (same-size garbage
        passes every other check and fails mid-training). None (the default): once per
        process and file version; True: every time; False: never."""
        path = Path(path)
        if not path.is_dir():
            fail(str(path), "data directory not found (run its data stage first)")
        for name in (TOKENS, INDEX, META):
            if not (path / name).is_file():
                fail(str(path / name), "missing data file")
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError) as err:
            fail(str(path / META), f"unreadable ({err.__class__.__name__})")
        try:
            tokens = np.load(path / TOKENS, mmap_mode="r")
            index = np.load(path / INDEX)
        except (OSError, ValueError, EOFError) as err:
            fail(str(path), f"truncated or corrupt data file ({err})")
        if len(tokens) != meta.get("n_tokens"):
            fail(str(path / TOKENS), f"truncated: {len(tokens)} tokens, meta.json says {meta.get('n_tokens')}")
        if len(index) != meta.get("n_samples", -2) + 1 or (len(index) and index[-1] != len(tokens)):
            fail(str(path / INDEX), "does not match tokens.npy (truncated or from another run)")
        if verify_hash is not False:
            _verify(path, tokens, meta, always=bool(verify_hash))
        return cls(path, tokens, index, meta)

    def __len__(self) -> int:
        return len(self.index) - 1

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    def sample(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[self.index[i] : self.index[i + 1]])

    def tokenizer(self) -> dict[str, Any]:
        file = self.path / TOKENIZER
        if not file.is_file():
            fail(str(file), "missing tokenizer file")
        return json.loads(file.read_text())


def _verify(path: Path, tokens: np.ndarray, meta: dict[str, Any], always: bool) -> None:
    stat = (path / TOKENS).stat()
    key = (str((path / TOKENS).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key in _VERIFIED and not always:
        return
    expected = meta.get("tokens_sha256")
    if expected is None:
        return  # written before meta.json recorded hashes
    if sha256_of(tokens) != expected:
        fail(str(path / TOKENS), "content differs from the tokens_sha256 in meta.json (changed or corrupted"
                                 " after it was written); rerun its data stage (dvc repro -f <stage>)")
    _VERIFIED.add(key)


def packed_windows(n_tokens: int, seq_len: int, stride: int | None = None, offset: int = 0) -> np.ndarray:
    """Start positions of windows of `seq_len + 1` tokens (inputs + shifted targets).

    Windows start at offset, offset + stride, ...; the last one ends inside the array.
    """
    stride = seq_len if stride is None else stride
    if seq_len < 1 or stride < 1 or offset < 0:
        raise ValueError("seq_len and stride must be >= 1 and offset >= 0")
    last = n_tokens - (seq_len + 1)
    if last < offset:
        return np.zeros(0, dtype=np.int64)
    return np.arange(offset, last + 1, stride, dtype=np.int64)
