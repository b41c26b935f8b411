"""A closed-vocabulary word-level tokenizer for iGSM text, built deterministically from a lexicon.

Pieces are words, numbers and single punctuation marks, each with or without one leading
space (" equals" and "equals" are two tokens), so decode(encode(text)) == text for any text
made of known pieces. "'s" is one piece. Numbers 0..22 are single tokens; other digit strings
are spelled digit by digit; anything else is <unk>.

Special tokens: <pad> 0, <sep> 1 (between problem, solution and answer), <eos> 2 (ends a
sample), <unk> 3. A training sample is problem <sep> solution <sep> answer <eos>; the
evaluation prompt is problem <sep>.
"""

from __future__ import annotations

import re
from pathlib import Path

from vld.data.igsm.lexicon import Lexicon
from vld.data.tokens import read_json
from vld.errors import fail

TYPE = "vld-igsm-word"
SPECIALS = ("<pad>", "<sep>", "<eos>", "<unk>")
PAD, SEP, EOS, UNK = range(4)
PATTERN = r"'s(?![A-Za-z])| ?[A-Za-z]+| ?\d+| ?[^\sA-Za-z\d]|\s"
TEMPLATE_TEXT = (
    "The number of each equals the sum difference and more than times as much How many does have "
    "Define as so . , ; = + - * ? '"
)


def build_vocab(lexicon: Lexicon) -> list[str]:
    """The vocabulary (ids from 4 on, after the specials), sorted so it depends only on the lexicon."""
    pattern = re.compile(PATTERN)
    words: set[str] = set()
    texts = [TEMPLATE_TEXT, " ".join(sorted(lexicon.words()))]
    texts.append(" ".join("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    texts.append(" ".join(str(i) for i in range(23)))
    for text in texts:
        for piece in pattern.findall(text):
            core = piece.strip()
            if core:
                words.add(core)
    words.add("'s")  # possessives of every item name, even when no name in the lexicon holds "'s"
    vocab = {" "}
    for w in words:
        vocab.add(w)
        if w != "'s":
            vocab.add(" " + w)
    return sorted(vocab)


class IgsmTokenizer:
    def __init__(self, vocab: list[str]):
        self.pieces = list(SPECIALS) + list(vocab)
        self.ids = {p: i for i, p in enumerate(self.pieces) if i >= len(SPECIALS)}
        self._lookup = self.ids.__getitem__
        self.pattern = re.compile(PATTERN)
        self.sep_id, self.eos_id, self.pad_id, self.unk_id = SEP, EOS, PAD, UNK

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    @classmethod
    def from_lexicon(cls, lexicon: Lexicon) -> "IgsmTokenizer":
        return cls(build_vocab(lexicon))

    def to_dict(self) -> dict:
        return {"type": TYPE, "version": 1, "pattern": PATTERN, "specials": list(SPECIALS), "pieces": self.pieces}

    @classmethod
    def load(cls, path: str | Path) -> "IgsmTokenizer":
        """Load tokenizer.json (or the one inside a data directory)."""
        path, data = read_json(path, "tokenizer", name_in_dir="tokenizer.json")
        if not isinstance(data, dict) or data.get("type") != TYPE or data.get("pattern") != PATTERN:
            fail(str(path), f"not a {TYPE} tokenizer (or made by another version)")
        pieces = data.get("pieces")
        if not isinstance(pieces, list) or pieces[: len(SPECIALS)] != list(SPECIALS):
            fail(str(path), "tokenizer pieces are missing or corrupt")
        return cls(pieces[len(SPECIALS) :])

    # ---- text <-> ids -------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        try:  # fast path: every piece known
            return list(map(self._lookup, self.pattern.findall(text)))
        except KeyError:
            pass
        # slow path: spell unknown numbers digit by digit; anything else unknown is <unk>
        get = self.ids.get
        out = []
        for p in self.pattern.findall(text):
            i = get(p)
            if i is not None:
                out.append(i)
            elif p.strip().isdigit() and p.strip().isascii():
                lead = p[: len(p) - len(p.lstrip())]
                digits = p.strip()
                out.append(get(lead + digits[0], UNK))
                out.extend(get(c, UNK) for c in digits[1:])
            else:
                out.append(UNK)
        return out

    def decode(self, ids) -> str:
        """Text of ids; <pad> is dropped, other specials and out-of-range ids show as <name>/<unk>."""
        pieces, n = self.pieces, len(self.pieces)
        out = []
        for i in ids:
            try:
                i = int(i)
            except (TypeError, ValueError):
                out.append("<unk>")
                continue
            if i == PAD:
                continue
            out.append(pieces[i] if 0 <= i < n else "<unk>")
        return "".join(out)

    def sample_ids(self, problem: str, solution: str, answer: str) -> list[int]:
        """problem <sep> solution <sep> answer <eos>."""
        return self.encode(problem) + [SEP] + self.encode(solution) + [SEP] + self.encode(answer) + [EOS]

    def prompt_ids(self, problem_text: str) -> list[int]:
        """The evaluation prompt: problem <sep>."""
        return self.encode(problem_text) + [SEP]

    def split_generation(self, ids) -> tuple[str, str]:
        """(solution, answer) from generated ids (what follows the prompt): solution <sep> answer <eos>.

        Robust to garbage: stops at the first <eos>; no <sep> means no answer; a second <sep>
        ends the answer."""
        clean = []
        for i in ids:
            try:
                i = int(i)
            except (TypeError, ValueError):
                i = UNK
            if i == EOS:
                break
            clean.append(i)
        if SEP in clean:
            cut = clean.index(SEP)
            sol, rest = clean[:cut], clean[cut + 1 :]
            if SEP in rest:
                rest = rest[: rest.index(SEP)]
        else:
            sol, rest = clean, []
        return self.decode(sol), self.decode(rest)

    def split_answer_only(self, ids) -> str:
        """The answer from the generation of an answer-only model (answer <eos> right after the
        prompt): a solution-format generation whose solution is empty."""
        return self.split_generation([SEP, *ids])[1]
