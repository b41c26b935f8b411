"""DataModules: fixed-length windows over a token set (iGSM, random tokens) and biographies.

Order of training windows. The run is one long stream of windows: data epoch e is a
permutation of all windows drawn by a torch.Generator seeded from (seed, e), and the
epochs are concatenated. Optimizer step s consumes stream positions
[s * G, (s + 1) * G) for global batch G; within it, rank r's micro-batch a takes the
contiguous chunk starting at (r * A + a) * m (A = accumulation, m = micro-batch size).
Hence
  * the same global batch at every step whatever the number of processes, devices or
    workers (1 process x 2 micro-batches == 2 processes x 1 micro-batch: same windows in
    the same micro-batches);
  * a resumed run restarts the stream at the restored global step, so it sees exactly
    the windows an uninterrupted run would have seen.
The sampler is rank-aware by itself, so the Trainer must not add a DistributedSampler:
`build_trainer` sets `use_distributed_sampler=False`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from vld.data.tokens import TokenSet, packed_windows
from vld.errors import fail

_SEED_STRIDE = 1_000_003  # epoch e of seed s -> generator seed s * stride + e (distinct for e < stride)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    generator = torch.Generator().manual_seed((seed * _SEED_STRIDE + epoch) % (2**63))
    return torch.randperm(n, generator=generator).numpy()


class StepSampler(Sampler):
    """Yields stream items for this rank's micro-batches, from the trainer's current step to max_steps.

    `epoch_size(e)` is the number of windows in data epoch e; items are (epoch, window) pairs.
    """

    def __init__(
        self,
        epoch_size: Callable[[int], int],
        seed: int,
        micro_batch_size: int,
        accumulation: int,
        rank: int,
        world_size: int,
        max_steps: int,
        start_step: Callable[[], int],
    ):
        self.epoch_size = epoch_size
        self.seed = seed
        self.m, self.accumulation = micro_batch_size, accumulation
        self.rank, self.world_size = rank, world_size
        self.max_steps = max_steps
        self.start_step = start_step
        self._perm_cache: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        return self.m * self.accumulation * self.world_size

    def __len__(self) -> int:
        # Lightning counts batches of the whole run in one "epoch"; on resume it restores how
        # many of them were done, so the length stays the full run.
        return self.max_steps * self.accumulation * self.m

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            # keep the current and the previous epoch: a micro-batch may straddle the boundary
            self._perm_cache = {e: p for e, p in self._perm_cache.items() if e == epoch - 1}
            self._perm_cache[epoch] = epoch_permutation(self.epoch_size(epoch), self.seed, epoch)
        return self._perm_cache[epoch]

    def _locate(self, position: int) -> tuple[int, int]:
        """Stream position -> (data epoch, offset in that epoch)."""
        epoch = 0
        while position >= (size := self.epoch_size(epoch)):
            position -= size
            epoch += 1
        return epoch, position

    def __iter__(self) -> Iterator[tuple[int, int]]:
        first = self.start_step()
        for step in range(first, self.max_steps):
            for a in range(self.accumulation):
                chunk = step * self.global_batch + (self.rank * self.accumulation + a) * self.m
                epoch, offset = self._locate(chunk)
                for _ in range(self.m):
                    if offset >= self.epoch_size(epoch):
                        epoch, offset = epoch + 1, 0
                    yield epoch, int(self._perm(epoch)[offset])
                    offset += 1


class ResumableDataLoader(DataLoader):
    """A DataLoader that tells Lightning it can resume mid-run: the position comes from the
    restored global step (see StepSampler), so there is no other state to save."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class TokenWindows(Dataset):
    """Windows of seq_len + 1 tokens over a token set; item (epoch, i) -> window i (int64).

    The token set is opened lazily so that the dataset pickles cheaply into loader workers."""

    def __init__(self, data_dir: Path, seq_len: int, stride: int | None, offset: int):
        self.data_dir, self.seq_len = Path(data_dir), seq_len
        token_set = TokenSet.open(self.data_dir)
        self.starts = packed_windows(len(token_set.tokens), seq_len, stride, offset)
        self.vocab_size = token_set.vocab_size
        self._tokens = None

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, item: tuple[int, int] | int) -> torch.Tensor:
        i = item[1] if isinstance(item, tuple) else item
        if self._tokens is None:
            self._tokens = TokenSet.open(self.data_dir).tokens
        start = int(self.starts[i])
        return torch.from_numpy(np.asarray(self._tokens[start : start + self.seq_len + 1], dtype=np.int64))

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tokens"] = None  # memory maps are reopened in each worker
        return state


class _WindowDataModuleBase(L.LightningDataModule):
    seq_len: int
    micro_batch_size: int
    seed: int
    num_workers: int

    def _dataset(self) -> Dataset:
        raise NotImplementedError

    def _epoch_size(self, epoch: int) -> int:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        if trainer is None:
            fail(type(self).__name__, "train_dataloader() needs a Trainer (use vld.train.run.run_training)")
        if trainer.max_steps is None or trainer.max_steps < 1:
            fail(type(self).__name__, "the Trainer must set max_steps")
        dataset = self._dataset()
        if self._epoch_size(0) < 1:
            fail(str(getattr(self, "data_dir", "data")), f"no window of {self.seq_len}+1 tokens fits in the data")
        sampler = StepSampler(
            self._epoch_size,
            seed=self.seed,
            micro_batch_size=self.micro_batch_size,
            accumulation=trainer.accumulate_grad_batches,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            max_steps=trainer.max_steps,
            start_step=lambda: trainer.global_step,
        )
        return ResumableDataLoader(
            dataset,
            batch_size=self.micro_batch_size,
            sampler=sampler,
            drop_last=False,  # the sampler yields whole micro-batches only
            num_workers=self.num_workers,
            persistent_workers=False,
            collate_fn=_collate,
        )


def _collate(items: list[Any]) -> Any:
    if isinstance(items[0], dict):
        return {key: torch.stack([item[key] for item in items]) for key in items[0]}
    return torch.stack(items)


class TokenWindowDataModule(_WindowDataModuleBase):
    """Packed windows over a token set (iGSM problems, random tokens), every token a target."""

    def __init__(
        self,
        data_dir: str | Path,
        seq_len: int,
        micro_batch_size: int,
        seed: int = 0,
        stride: int | None = None,
        offset: int = 0,
        num_workers: int = 0,
    ):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.seq_len, self.micro_batch_size = int(seq_len), int(micro_batch_size)
        self.seed, self.stride, self.offset, self.num_workers = int(seed), stride, int(offset), int(num_workers)
        if self.seq_len < 1 or self.micro_batch_size < 1:
            fail("data", f"seq_len and micro_batch_size must be >= 1, got {seq_len} and {micro_batch_size}")
        if stride is not None and int(stride) < 1:
            fail("data.stride", f"must be >= 1, got {stride}")
        self._windows: TokenWindows | None = None
        TokenSet.open(self.data_dir)  # a missing or truncated data set fails now, before any compute

    @property
    def windows(self) -> TokenWindows:
        if self._windows is None:
            self._windows = TokenWindows(self.data_dir, self.seq_len, self.stride, self.offset)
        return self._windows

    @property
    def vocab_size(self) -> int:
        return self.windows.vocab_size

    def _dataset(self) -> Dataset:
        return self.windows

    def _epoch_size(self, epoch: int) -> int:
        return len(self.windows)


class _FreshBiographies(Dataset):
    """Item (epoch, i) -> window i of the rendering of data epoch e (re-rendered per epoch)."""

    def __init__(self, data_dir: Path, seq_len: int, seed: int):
        self.data_dir, self.seq_len, self.seed = Path(data_dir), seq_len, seed
        self._renderer = None
        self._rendered: dict[int, np.ndarray] = {}  # the last two epochs' token streams
        self._sizes: dict[int, int] = {}

    def _render(self, epoch: int) -> np.ndarray:
        if epoch not in self._rendered:
            if self._renderer is None:
                from vld.data.knowledge.biographies import BiographyRenderer

                self._renderer = BiographyRenderer(self.data_dir)
            tokens = np.asarray(self._renderer.render(epoch, self.seed)[0], dtype=np.int64)
            self._rendered = {e: t for e, t in self._rendered.items() if e == epoch - 1}
            self._rendered[epoch] = tokens
            self._sizes[epoch] = len(packed_windows(len(tokens), self.seq_len))
        return self._rendered[epoch]

    def epoch_size(self, epoch: int) -> int:
        if epoch not in self._sizes:
            self._render(epoch)
        return self._sizes[epoch]

    def __len__(self) -> int:
        return self.epoch_size(0)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        epoch, i = item
        tokens = self._render(epoch)
        start = i * self.seq_len  # packed_windows with stride seq_len, offset 0
        return torch.from_numpy(tokens[start : start + self.seq_len + 1].copy())

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_renderer=None, _rendered={})
        return state


class BiographyDataModule(_WindowDataModuleBase):
    """Biographies as packed windows. mode "fixed": the token set in data_dir, as rendered once;
    mode "fresh": each data epoch is a new rendering, BiographyRenderer(data_dir).render(epoch, seed)."""

    MODES = ("fixed", "fresh")

    def __init__(self, data_dir: str | Path, seq_len: int, micro_batch_size: int, seed: int = 0, mode: str = "fixed", num_workers: int = 0):
        super().__init__()
        if mode not in self.MODES:
            fail("data.mode", f"unknown {mode!r}; expected one of {', '.join(self.MODES)}")
        self.data_dir, self.mode = Path(data_dir), mode
        self.seq_len, self.micro_batch_size = int(seq_len), int(micro_batch_size)
        self.seed, self.num_workers = int(seed), int(num_workers)
        self._fixed = TokenWindowDataModule(data_dir, seq_len, micro_batch_size, seed=seed) if mode == "fixed" else None
        TokenSet.open(self.data_dir)  # fail before any compute
        self._fresh: _FreshBiographies | None = None

    @property
    def fresh(self) -> _FreshBiographies:
        if self._fresh is None:
            self._fresh = _FreshBiographies(self.data_dir, self.seq_len, self.seed)
        return self._fresh

    @property
    def vocab_size(self) -> int:
        return TokenSet.open(self.data_dir).vocab_size

    def _dataset(self) -> Dataset:
        return self._fixed.windows if self.mode == "fixed" else self.fresh

    def _epoch_size(self, epoch: int) -> int:
        return len(self._fixed.windows) if self.mode == "fixed" else self.fresh.epoch_size(epoch)


class _KHopStream(Dataset):
    """Item (step, j) -> sequence j of optimizer step `first_step + step`'s batch of the k-hop stream.

    Data epoch e of the StepSampler is optimizer step e (an epoch holds one global batch), and
    a step's batch is a pure function of (spec.seed, seed, step): generated once per step, vectorised,
    whichever process or worker asks for it. `first_step` > 0 continues a stream a model was
    trained on (a retrofit's fine-tuning)."""

    def __init__(self, spec, global_batch_size: int, seed: int = 0, first_step: int = 0):
        self.spec, self.global_batch_size, self.seed = spec, int(global_batch_size), int(seed)
        self.first_step = int(first_step)
        self._step, self._batch = None, None

    def __len__(self) -> int:
        return self.global_batch_size

    def _sequences(self, step: int):
        if step != self._step:
            from vld.data.khop import training_batch

            inputs, labels = training_batch(self.spec, self.first_step + step, self.global_batch_size, self.seed)
            self._step, self._batch = step, (torch.from_numpy(inputs), torch.from_numpy(labels))
        return self._batch

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        step, j = item
        inputs, labels = self._sequences(int(step))
        return {"inputs": inputs[j], "labels": labels[j]}

    def __getitems__(self, items: list[tuple[int, int]]) -> list[dict[str, torch.Tensor]]:
        return [self[item] for item in items]


class KHopDataModule(_WindowDataModuleBase):
    """Fresh k-hop sequences every step (vld.data.khop), labelled at every position."""

    def __init__(self, spec, global_batch_size: int, micro_batch_size: int, seed: int = 0, num_workers: int = 0,
                 first_step: int = 0):
        super().__init__()
        self.spec = spec
        self.seq_len, self.micro_batch_size = spec.seq_len, int(micro_batch_size)
        self.seed, self.num_workers = int(seed), int(num_workers)
        self.global_batch_size = int(global_batch_size)
        self.stream = _KHopStream(spec, self.global_batch_size, self.seed, first_step)

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    def _dataset(self) -> Dataset:
        return self.stream

    def _epoch_size(self, epoch: int) -> int:
        return self.global_batch_size


class _AnswerOnlyProblems(Dataset):
    """Item (epoch, i) -> problem i as problem <sep> answer <eos>, labelled on the answer
    (vld.data.igsm.objectives.AnswerOnlyRows, which fails at construction when a problem does not fit)."""

    def __init__(self, data_dir: Path, seq_len: int, where: str):
        from vld.data.igsm.objectives import AnswerOnlyRows

        self.rows = AnswerOnlyRows(data_dir, seq_len, where)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        inputs, labels = self.rows.row(item[1] if isinstance(item, tuple) else item)
        return {"inputs": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}


class AnswerOnlyDataModule(_WindowDataModuleBase):
    """iGSM problems one per row, the loss on the answer only (objective answer_only); each data
    epoch is a permutation of the problems, in the StepSampler's order."""

    def __init__(self, data_dir: str | Path, seq_len: int, micro_batch_size: int, seed: int = 0,
                 num_workers: int = 0, where: str = "train.seq_len"):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.seq_len, self.micro_batch_size = int(seq_len), int(micro_batch_size)
        self.seed, self.num_workers = int(seed), int(num_workers)
        if self.seq_len < 1 or self.micro_batch_size < 1:
            fail("data", f"seq_len and micro_batch_size must be >= 1, got {seq_len} and {micro_batch_size}")
        self.problems = _AnswerOnlyProblems(self.data_dir, self.seq_len, where)

    @property
    def vocab_size(self) -> int:
        return TokenSet.open(self.data_dir).vocab_size

    def _dataset(self) -> Dataset:
        return self.problems

    def _epoch_size(self, epoch: int) -> int:
        return len(self.problems)


def igsm_datamodule(objective: str, data_dir: str | Path, seq_len: int, micro_batch_size: int, seed: int = 0,
                    num_workers: int = 0, where: str = "train.seq_len") -> _WindowDataModuleBase:
    """The training data of an iGSM objective (vld.data.igsm.objectives)."""
    if objective == "answer_only":
        return AnswerOnlyDataModule(data_dir, seq_len, micro_batch_size, seed=seed, num_workers=num_workers, where=where)
    return TokenWindowDataModule(data_dir, seq_len, micro_batch_size, seed=seed, num_workers=num_workers)


class _SftConversations(Dataset):
    """Item (epoch, i) -> entry i of the SFT mixture (vld.data.sft): one conversation per row,
    right-padded to seq_len + 1 tokens; the label of position t is token t + 1 where that token
    is the assistant's, else -1 (so padding and prompts carry no loss)."""

    def __init__(self, data_dir: Path):
        from vld.data.sft import sft_rows

        self.data_dir = Path(data_dir)
        tokens, _, self.mixture = sft_rows(self.data_dir)
        self.seq_len = int(tokens.meta["spec"]["max_tokens"]) - 1
        self._opened = None

    def __len__(self) -> int:
        return len(self.mixture)

    def __getitem__(self, item: tuple[int, int] | int) -> dict[str, torch.Tensor]:
        if self._opened is None:
            from vld.data.sft import sft_rows

            self._opened = sft_rows(self.data_dir)[:2]
        tokens, assistant = self._opened
        i = int(self.mixture[item[1] if isinstance(item, tuple) else item])
        start, end = int(tokens.index[i]), int(tokens.index[i + 1])
        row = np.zeros(self.seq_len + 1, dtype=np.int64)
        mask = np.zeros(self.seq_len + 1, dtype=bool)
        row[: end - start] = tokens.tokens[start:end]
        mask[: end - start] = assistant[start:end] == 1
        labels = np.where(mask[1:], row[1:], -1)
        return {"inputs": torch.from_numpy(row[:-1]), "labels": torch.from_numpy(labels)}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_opened"] = None  # memory maps are reopened in each worker
        return state


class SftDataModule(_WindowDataModuleBase):
    """Chat conversations one per row, the loss on the assistant's tokens (vld.data.sft);
    each data epoch is a permutation of the mixture, in the StepSampler's order."""

    def __init__(self, data_dir: str | Path, micro_batch_size: int, seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.data_dir = Path(data_dir)
        self.micro_batch_size, self.seed, self.num_workers = int(micro_batch_size), int(seed), int(num_workers)
        self.conversations = _SftConversations(self.data_dir)  # a missing set fails now, before any compute
        self.seq_len = self.conversations.seq_len

    @property
    def vocab_size(self) -> int:
        return TokenSet.open(self.data_dir).vocab_size

    def _dataset(self) -> Dataset:
        return self.conversations

    def _epoch_size(self, epoch: int) -> int:
        return len(self.conversations)
