"""What an iGSM model is trained to write after a problem (a reasoning variant's `objective`).

    solution     (the default) every token of the packed stream is a target:
                 problem <sep> solution <sep> answer <eos>. The model learns to write the
                 solution out, so its serial work is spread over the tokens it writes.
    answer_only  one problem per row, problem <sep> answer <eos>, and the loss on the answer
                 and <eos> only: no solution text is ever seen, so the whole computation has
                 to happen inside the forward pass (the setting of Saunshi et al.'s looped
                 models). Evaluation prompts with problem <sep> and reads the answer directly.

Torch-free: the validator imports this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vld.data.igsm.tokenizer import PAD, SEP
from vld.errors import fail

OBJECTIVES = ("solution", "answer_only")
DEFAULT_OBJECTIVE = "solution"
NO_LABEL = -1  # a position left out of the loss (vld.train.module.unpack_batch)


def check_objective(value, where: str) -> str:
    if value not in OBJECTIVES:
        fail(where, f"unknown objective {value!r} (known: {', '.join(OBJECTIVES)})")
    return value


class AnswerOnlyRows:
    """problem <sep> answer <eos> of every problem of the iGSM token set in `data_dir`, as rows of
    seq_len: row(i) -> (inputs, labels), int64; labels[t] is the token after inputs[t] where that
    token is part of the answer or its <eos>, else NO_LABEL; rows are right-padded with <pad>.

    The <sep> offsets are found once; a pickled copy (a loader worker) carries them and reopens
    only the memory map."""

    def __init__(self, data_dir: str | Path, seq_len: int, where: str):
        from vld.data.tokens import TokenSet

        self.data_dir, self.seq_len = Path(data_dir), int(seq_len)
        token_set = TokenSet.open(self.data_dir)
        index, n = token_set.index, len(token_set)
        seps = np.flatnonzero(np.asarray(token_set.tokens) == SEP)
        owner = np.searchsorted(index, seps, side="right") - 1
        if len(seps) != 2 * n or not np.array_equal(owner, np.repeat(np.arange(n), 2)):
            fail(where, "not an iGSM token set: every problem must hold exactly two <sep>"
                        " (problem <sep> solution <sep> answer <eos>)")
        self.starts, self.ends = index[:-1].astype(np.int64), index[1:].astype(np.int64)
        self.first_sep, self.second_sep = seps[0::2].astype(np.int64), seps[1::2].astype(np.int64)
        # problem and its <sep> (first_sep - start + 1) + answer and <eos> (end - second_sep - 1)
        longest = int(((self.first_sep - self.starts) + (self.ends - self.second_sep)).max()) if n else 0
        if longest - 1 > self.seq_len:  # a row's inputs are its sample but the last token
            fail(where, f"the longest problem <sep> answer <eos> has {longest} tokens: the answer_only"
                        f" objective needs seq_len >= {longest - 1}, got {self.seq_len}")
        self._tokens = token_set.tokens

    def __len__(self) -> int:
        return len(self.starts)

    def __getstate__(self):
        return {**self.__dict__, "_tokens": None}

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._tokens is None:
            from vld.data.tokens import TokenSet

            self._tokens = TokenSet.open(self.data_dir, verify_hash=False).tokens
        problem = np.asarray(self._tokens[self.starts[i]:self.first_sep[i] + 1], dtype=np.int64)
        answer = np.asarray(self._tokens[self.second_sep[i] + 1:self.ends[i]], dtype=np.int64)
        sample = np.concatenate([problem, answer])
        inputs = np.full(self.seq_len, PAD, dtype=np.int64)
        labels = np.full(self.seq_len, NO_LABEL, dtype=np.int64)
        inputs[:len(sample) - 1] = sample[:-1]
        # input position t predicts sample[t + 1]; the answer starts after the <sep> at len(problem) - 1
        labels[len(problem) - 1:len(sample) - 1] = answer
        return inputs, labels
