"""Supervised fine-tuning chat data (`data.sft.<name>`): local JSON-lines or parquet files of
conversations in the chat "messages" form, tokenized with a Hugging Face checkpoint's own
tokenizer and chat template into a token set labelled on the assistant's tokens only.

    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

The token set (vld.data.tokens) holds one conversation per sample, and beside it
`assistant.npy`, one uint8 per token: 1 where the token is part of an assistant turn (its
content and the template's end-of-turn tokens), 0 elsewhere (system and user turns, the
template's headers). `mixture.npy` lists the conversations of one data epoch: each file's
conversations `weight` times (a fraction: a seeded subset), so the files mix by their weights.

How assistant tokens are found: the template is rendered for the conversation up to each
assistant turn with the generation prompt (`add_generation_prompt=True`) and up to the end of
that turn; the turn's tokens are those between the two, which must extend the shorter
rendering's tokens (one line naming file:line otherwise). Templates that insert today's date
(Llama 3's) get a fixed `date_string`, so the tokens do not depend on the day they are made.

Torch-free: the validator imports this module (the stage imports transformers).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from vld.declared import check_keys
from vld.errors import fail

ASSISTANT_FILE, MIXTURE_FILE = "assistant.npy", "mixture.npy"
ROLES = ("system", "user", "assistant", "tool")
DATE_STRING = "26 Jul 2024"  # the Llama 3 template's own default date


@dataclass(frozen=True)
class SftFile:
    path: str  # inside SftSpec.dir
    weight: float = 1.0


@dataclass(frozen=True)
class SftSpec:
    """`data.sft.<name>`: the checkpoint whose tokenizer and chat template tokenize the files,
    the folder of the files (DVC's dependency) and the files in it with their mixing weights,
    the longest conversation kept (longer ones are cut), and the seed of the fractional mixing."""

    source: str
    dir: str
    files: tuple[SftFile, ...]
    max_tokens: int = 2048
    seed: int = 0

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> "SftSpec":
        if not isinstance(raw, Mapping):
            fail(where, f"must be a mapping (source, files, max_tokens, seed), got {raw!r}")
        check_keys(raw, cls, where)
        source = raw.get("source")
        if not isinstance(source, str) or not source:
            fail(f"{where}.source", "missing: set the path of a local Hugging Face Llama checkpoint directory"
                 " (docs/lm_retrofit.md)")
        folder = raw.get("dir")
        if not isinstance(folder, str) or not folder:
            fail(f"{where}.dir", "missing: the folder that holds the SFT files (the data stage depends on it)")
        files = raw.get("files")
        if not isinstance(files, list) or not files:
            fail(f"{where}.files", "must be a non-empty list of {path: FILE, weight: NUMBER} (or of paths)")
        parsed = []
        for i, entry in enumerate(files):
            at = f"{where}.files[{i}]"
            entry = {"path": entry} if isinstance(entry, str) else entry
            if not isinstance(entry, Mapping):
                fail(at, f"must be a path or {{path, weight}}, got {entry!r}")
            check_keys(entry, SftFile, at)
            path, weight = entry.get("path"), entry.get("weight", 1.0)
            if not isinstance(path, str) or not path.endswith((".jsonl", ".json", ".parquet")):
                fail(f"{at}.path", f"must be a .jsonl or .parquet file inside {where}.dir, got {path!r}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                fail(f"{at}.weight", f"must be a number > 0, got {weight!r}")
            parsed.append(SftFile(path, float(weight)))
        for key in ("max_tokens", "seed"):
            value = raw.get(key, getattr(cls, key))
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "max_tokens" else 0):
                fail(f"{where}.{key}", f"must be an integer >= {2 if key == 'max_tokens' else 0}, got {value!r}")
        return cls(source, folder, tuple(parsed), raw.get("max_tokens", cls.max_tokens), raw.get("seed", cls.seed))

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------- reading


def conversations(path: str | Path) -> Iterator[tuple[str, list[dict]]]:
    """(file:line, messages) of each conversation of a JSON-lines or parquet file, checked:
    one line naming file:line and what is wrong."""
    path = Path(path)
    if not path.is_file():
        fail(str(path), "SFT data file not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as err:  # pyarrow's errors have no common base
            fail(str(path), f"not a readable parquet file ({type(err).__name__})")
        for i, row in enumerate(rows, start=1):
            yield f"{path}:{i}", check_messages(row, f"{path}:{i}")
        return
    with open(path, encoding="utf-8") as handle:
        for i, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                fail(f"{path}:{i}", f"not a JSON object ({err.__class__.__name__}: {str(err)[:80]})")
            yield f"{path}:{i}", check_messages(row, f"{path}:{i}")


def check_messages(row: Any, where: str) -> list[dict]:
    if not isinstance(row, Mapping) or "messages" not in row:
        fail(where, "needs a \"messages\" list ({\"messages\": [{\"role\": ..., \"content\": ...}, ...]})")
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        fail(where, "\"messages\" must be a non-empty list")
    for j, message in enumerate(messages):
        if not isinstance(message, Mapping) or set(message) - {"role", "content"} or \
                not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            fail(where, f"message {j} must be {{\"role\": str, \"content\": str}}, got {str(message)[:80]}")
        if message["role"] not in ROLES:
            fail(where, f"message {j} has role {message['role']!r} (known: {', '.join(ROLES)})")
    if not any(m["role"] == "assistant" for m in messages):
        fail(where, "has no assistant message (nothing to learn from)")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# ------------------------------------------------------------------------------- tokenizing


def load_tokenizer(source: str | Path, where: str):
    """The checkpoint's own tokenizer (local files only); one line if it has none or no chat template."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    except Exception as err:  # transformers raises OSError, ValueError, ... for a missing tokenizer
        fail(where, f"{source} has no usable tokenizer ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
    if not getattr(tokenizer, "chat_template", None):
        fail(where, f"{source}'s tokenizer has no chat template")
    return tokenizer


def _render(tokenizer, messages: list[dict], generation_prompt: bool, where: str) -> list[int]:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                             date_string=DATE_STRING)
    except Exception as err:  # jinja's and transformers' errors from the template itself
        fail(where, f"the chat template cannot render the first {len(messages)} messages ({type(err).__name__}:"
             f" {str(err).splitlines()[0][:120] if str(err) else ''})")
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_conversation(tokenizer, messages: list[dict], where: str) -> tuple[list[int], list[int]]:
    """(tokens, assistant mask) of one conversation (module docstring: how turns are found)."""
    tokens = _render(tokenizer, messages, False, where)
    mask = [0] * len(tokens)
    for end, message in enumerate(messages, start=1):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[: end - 1], True, where)
        through = _render(tokenizer, messages[:end], False, where)
        if through[: len(before)] != before or tokens[: len(through)] != through:
            fail(where, f"the chat template does not render assistant turn {end - 1} as an extension of the"
                 " conversation before it; its tokens cannot be located")
        for t in range(len(before), len(through)):
            mask[t] = 1
    return tokens, mask


def make_sft(spec: SftSpec, out: Path, where: str, source_sha256: str | None = None) -> dict:
    """Tokenize the files into the token set `out` (atomic); returns its meta. `source_sha256`
    (the checkpoint's, recorded): a changed checkpoint changes the set, so DVC re-runs the
    trainings on it."""
    from vld.data.tokens import write_token_set

    tokenizer = load_tokenizer(spec.source, f"{where}.source")
    tokens, masks, index, per_file, cut = [], [], [0], [], 0
    for file in spec.files:
        first = len(index) - 1
        for at, messages in conversations(Path(spec.dir) / file.path):
            ids, mask = tokenize_conversation(tokenizer, messages, at)
            if len(ids) > spec.max_tokens:
                ids, mask, cut = ids[: spec.max_tokens], mask[: spec.max_tokens], cut + 1
            if not any(mask[1:]):
                fail(at, f"no assistant token within the first {spec.max_tokens} tokens (max_tokens)")
            tokens.extend(ids)
            masks.extend(mask)
            index.append(len(tokens))
        per_file.append((first, len(index) - 1))
    mixture = mixture_order(per_file, [f.weight for f in spec.files], spec.seed)
    vocab_size = len(tokenizer)
    meta = {"generator": "vld.data.sft", "spec": spec.to_dict(), "source_sha256": source_sha256,
            "conversations_cut": cut,
            "mixture_size": int(len(mixture)), "assistant_tokens": int(sum(masks)),
            "conversations_per_file": [b - a for a, b in per_file]}
    write_token_set(out, np.asarray(tokens, dtype=np.int64), np.asarray(index), vocab_size, meta,
                    extra_files={ASSISTANT_FILE: _npy(np.asarray(masks, dtype=np.uint8)),
                                 MIXTURE_FILE: _npy(mixture)})
    return meta


def mixture_order(per_file: list[tuple[int, int]], weights: list[float], seed: int) -> np.ndarray:
    """Conversation ids of one data epoch: file i's conversations floor(w_i) times, plus a
    seeded subset of round(frac(w_i) * n_i) of them."""
    rng = np.random.default_rng(seed)
    ids = []
    for (first, end), weight in zip(per_file, weights):
        conversations_ = np.arange(first, end, dtype=np.int64)
        whole, part = int(weight), weight - int(weight)
        ids.extend([conversations_] * whole)
        n_part = int(round(part * len(conversations_)))
        if n_part:
            ids.append(np.sort(rng.permutation(conversations_)[:n_part]))
    order = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    if not len(order):
        fail("data.sft", "the weights leave no conversation in the mixture")
    return order


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def sft_rows(data_dir: str | Path):
    """(TokenSet, assistant mask, mixture) of a written SFT token set."""
    from vld.data.tokens import TokenSet

    tokens = TokenSet.open(data_dir)
    for name in (ASSISTANT_FILE, MIXTURE_FILE):
        if not (Path(data_dir) / name).is_file():
            fail(str(Path(data_dir) / name), "missing (not an SFT token set: run its data_sft stage)")
    return tokens, np.load(Path(data_dir) / ASSISTANT_FILE, mmap_mode="r"), np.load(Path(data_dir) / MIXTURE_FILE)
