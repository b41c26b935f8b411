"""Knowledge-capacity measures: how many bits of a dataset a model has absorbed.

Each measure is a function (model, data, seq_len, batch_size=..., ...) -> dict, for any
nn.Module whose forward(tokens[B, T]) returns logits [B, T, V] (any VLD schedule, any
checkpoint). Windows are processed batch by batch and each batch's logits in chunks of
positions; sums are kept in float64. Memory is O(batch_size * seq_len * V), never O(k * n).

Random tokens (k tokens IID uniform over n values; the model's first prediction is for token 1,
so P = k - 1 tokens are predicted, each exactly once; see `eval_windows`):
  H1 = P * log2(n)                                    bits of the predicted tokens
  entropy_capacity        dH = H1 - H2,  H2 = sum over predicted positions of the entropy (bits)
                          of the predicted distribution (the paper's measure)
  cross_entropy_capacity  H1 - sum -log2 p(true token)  (sound: a lower bound on what is stored)
Biographies (Physics of LMs Part 3.3):
  bio_capacity  N*log2(N0 / e^p1) + N*log2(S0 / e^p2), p1 / p2 = summed natural-log loss on the
                name / attribute-value tokens per person
Bits per parameter use the plain parameter count and Part 3.3's count (embedding rows of
tokens that never occur in the data excluded). `limit` (token measures and bio_capacity) scores
an evenly spread subset of at most `limit` windows or biographies: the totals are then the
subset's, the per-token and per-person values estimate the whole set's (learning curves use
this, vld.train.curves). docs/knowledge.md has the details.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from vld.data.tokens import TokenSet
from vld.errors import fail

LN2 = math.log(2.0)
RANDOM_TOKENS = "vld.data.knowledge.random_tokens"
BIOGRAPHIES = "vld.data.knowledge.biographies"


# ----------------------------------------------------------------------------- windows

def eval_windows(n_tokens: int, seq_len: int, overlap: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """Evaluation windows that predict every token except token 0 exactly once.

    Returns (starts, first_scored, window_len). Window w feeds tokens[s : s+L] (s = starts[w],
    L = window_len = min(seq_len, n_tokens - 1)) and its position j predicts token s+1+j; only
    positions j >= first_scored[w] are scored. overlap = 0 is the paper's non-overlapping layout
    (stride L; the first targets of each window see little context). overlap = c > 0 advances by
    L - c and scores only the last L - c positions of each window after the first, so every
    prediction past the first window has at least c tokens of context. The last window is moved
    back to end exactly at the last token, scoring only targets not scored before.
    """
    if n_tokens < 2:
        fail("data", f"needs at least 2 tokens to predict one, got {n_tokens}")
    if seq_len < 1:
        fail("seq_len", f"must be >= 1, got {seq_len}")
    if not 0 <= overlap < seq_len:
        fail("overlap", f"must be in 0..seq_len-1 = 0..{seq_len - 1}, got {overlap}")
    length = min(seq_len, n_tokens - 1)
    overlap = min(overlap, length - 1)
    stride = length - overlap
    last_target = n_tokens - 1
    starts = np.arange(0, last_target - length + 1, stride, dtype=np.int64)
    first = np.full(len(starts), overlap, dtype=np.int64)
    first[0] = 0
    covered = int(starts[-1]) + length  # last token scored so far
    if covered < last_target:
        tail = last_target - length
        starts = np.append(starts, tail)
        first = np.append(first, covered - tail)
    return starts, first, length


# ----------------------------------------------------------------------------- plumbing

def _open(data: Any) -> TokenSet:
    if isinstance(data, TokenSet):
        return data
    if isinstance(data, (str, Path)):
        return TokenSet.open(data)
    fail("data", f"expected a token-set directory or TokenSet, got {type(data).__name__}")


def _device_of(model: nn.Module, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_args(seq_len: int, batch_size: int, chunk: int, limit: int | None = None) -> None:
    given = {"seq_len": seq_len, "batch_size": batch_size, "chunk": chunk}
    if limit is not None:  # optional: None means every item
        given["limit"] = limit
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            fail(key, f"must be an integer >= 1, got {value!r}")


def evenly_spread(count: int, limit: int | None) -> np.ndarray:
    """Indices of at most `limit` of `count` items, evenly spread from the first to the last
    (all of them when limit is None or >= count)."""
    if limit is None or limit >= count:
        return np.arange(count, dtype=np.int64)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def _measuring(model: nn.Module):
    """Eval mode (no dropout) and no autograd for a measure; the model's mode is restored after."""
    import contextlib

    from vld.model import eval_mode

    stack = contextlib.ExitStack()
    stack.enter_context(eval_mode(model))
    stack.enter_context(torch.inference_mode())
    return stack


def _logits(model: nn.Module, inputs: torch.Tensor, min_vocab: int) -> torch.Tensor:
    logits = model(inputs)
    if isinstance(logits, (tuple, list)):  # models returning (logits, extras)
        logits = logits[0]
    if logits.ndim != 3 or logits.shape[:2] != inputs.shape:
        fail("model", f"forward must return logits [B, T, V] for tokens {list(inputs.shape)}, got {list(logits.shape)}")
    if logits.shape[-1] < min_vocab:
        fail("model", f"predicts {logits.shape[-1]} tokens but the data has vocab_size {min_vocab}")
    return logits


def _row_stats(logits: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor, dtype: torch.dtype, chunk: int, entropy: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, slice]]:
    """For the kept rows of logits [R, V]: natural-log loss of the target and (optionally) the
    entropy of the prediction. Works on `chunk` rows at a time, so only chunk x V values are ever
    upcast or copied; yields (loss, entropy or None, the chunk's row slice)."""
    for lo in range(0, logits.shape[0], chunk):
        rows = slice(lo, lo + chunk)
        kept = keep[rows]
        if not bool(kept.any()):
            continue
        part = logits[rows]
        if not bool(kept.all()):
            part = part[kept]
        # log p_i = x_i - log s with x = logits - max (promoted to `dtype` in the same kernel),
        # s = sum exp(x); entropy = log s - sum(exp(x) * x) / s: one exp pass, no log per entry
        x = part - part.max(dim=-1, keepdim=True).values.to(dtype)
        e = torch.exp(x)
        total = e.sum(-1)
        log_s = torch.log(total)
        loss = log_s - x.gather(1, targets[rows][kept][:, None]).squeeze(1)
        ent = None
        if entropy:
            dot = torch.linalg.vecdot(e, x)
            if bool(torch.isnan(dot).any()):
                # -inf logits give 0 * -inf; clamping keeps 0 * log 0 = 0 (and real NaNs NaN)
                dot = torch.linalg.vecdot(e, x.clamp_(min=-torch.finfo(dtype).max))
            ent = log_s - dot / total
        yield loss, ent, rows


# ----------------------------------------------------------------------------- parameter counts

def count_parameters(model: nn.Module, vocab_size: int, used_token_ids: np.ndarray | None = None) -> dict[str, int]:
    """Plain count (shared and tied tensors counted once) and Part 3.3's count, which drops the
    rows of token ids that never occur in the data from every per-token table: the input
    embeddings and the output head (weight and bias), found by module (see `token_tables`),
    not by shape: a layer whose width happens to equal the vocabulary size keeps every row.
    """
    params = list({id(p): p for p in model.parameters()}.values())
    plain = sum(p.numel() for p in params)
    if used_token_ids is None:
        return {"n_params": plain, "n_params_used": plain}
    n_used = int(np.count_nonzero(np.unique(np.asarray(used_token_ids)) < vocab_size))
    unused_rows = vocab_size - n_used
    dropped = sum(unused_rows * (p.numel() // vocab_size) for p in token_tables(model, vocab_size))
    return {"n_params": plain, "n_params_used": plain - dropped}


def token_tables(model: nn.Module, vocab_size: int) -> list[nn.Parameter]:
    """The per-token tensors (one row per token id, tied ones once): the weight of every
    nn.Embedding over the vocabulary, the output head's weight and bias, and a per-token
    tensor the model holds itself (a logit bias registered on the top module). The head is
    `get_output_embeddings()` where the model has it (Hugging Face), else its `lm_head` or
    `head`, else the last nn.Linear with `vocab_size` outputs."""
    tables = {id(m.weight): m.weight for m in model.modules()
              if isinstance(m, nn.Embedding) and m.num_embeddings == vocab_size}
    for p in model.parameters(recurse=False):
        if p.ndim >= 1 and p.shape[0] == vocab_size:
            tables[id(p)] = p
    head = None
    if callable(getattr(model, "get_output_embeddings", None)):
        head = model.get_output_embeddings()
    for name in ("lm_head", "head"):
        if head is None and isinstance(getattr(model, name, None), nn.Linear):
            head = getattr(model, name)
    if head is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == vocab_size]
        head = linears[-1] if linears else None
    if isinstance(head, nn.Linear) and head.out_features == vocab_size:
        for p in (head.weight, head.bias):
            if p is not None:
                tables[id(p)] = p
    return list(tables.values())


def _per_param(out: dict[str, Any], key: str, counts: dict[str, int]) -> None:
    out[f"{key}_per_param"] = out[key] / counts["n_params"]
    out[f"{key}_per_param_used"] = out[key] / counts["n_params_used"]


# ----------------------------------------------------------------------------- random tokens

def token_stats(
    model: nn.Module,
    data: str | Path | TokenSet,
    seq_len: int,
    batch_size: int = 2,
    overlap: int = 0,
    entropy: bool = True,
    chunk: int = 64,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """One streaming pass over the token set's flat sequence: the sums every token measure uses.

    Returns n_predicted, loss_nats (sum of -ln p(true)), entropy_nats (sum of prediction
    entropies, if `entropy`), vocab sizes, and the per-parameter counts. `limit`: only an
    evenly spread subset of at most `limit` of the windows is scored (None: all).
    """
    _check_args(seq_len, batch_size, chunk, limit)
    token_set = _open(data)
    tokens = token_set.tokens
    n = token_set.vocab_size
    starts, first, length = eval_windows(len(tokens), seq_len, overlap)
    chosen = evenly_spread(len(starts), limit)
    starts, first = starts[chosen], first[chosen]
    device = _device_of(model, device)
    positions = torch.arange(length, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    ent_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_predicted = 0
    model_vocab = None
    with _measuring(model):
        for lo in range(0, len(starts), batch_size):
            batch_starts = starts[lo : lo + batch_size]
            windows = np.stack([np.asarray(tokens[s : s + length + 1], dtype=np.int64) for s in batch_starts])
            windows = torch.from_numpy(windows).to(device)
            logits = _logits(model, windows[:, :-1], n)
            model_vocab = logits.shape[-1]
            scored = positions[None, :] >= torch.from_numpy(first[lo : lo + batch_size]).to(device)[:, None]
            flat = logits.reshape(-1, model_vocab)
            n_predicted += int(scored.sum())
            for loss, ent, _ in _row_stats(flat, windows[:, 1:].reshape(-1), scored.reshape(-1), dtype, chunk, entropy):
                loss_sum += loss.sum(dtype=torch.float64)
                if ent is not None:
                    ent_sum += ent.sum(dtype=torch.float64)
            del logits, flat
    used = np.unique(np.asarray(tokens))
    counts = count_parameters(model, model_vocab, used)
    return {
        "n_tokens": int(len(tokens)),
        "n_predicted": n_predicted,
        "vocab_size": n,
        "model_vocab_size": int(model_vocab),
        "loss_nats": float(loss_sum),
        "entropy_nats": float(ent_sum) if entropy else None,
        "seq_len": int(length),
        "overlap": int(overlap),
        **({"limit": int(limit)} if limit is not None else {}),
        **counts,
    }


def _token_measures(stats: dict[str, Any], which: tuple[str, ...]) -> dict[str, Any]:
    n, k, predicted = stats["vocab_size"], stats["n_tokens"], stats["n_predicted"]
    h1 = predicted * math.log2(n)
    out: dict[str, Any] = {
        "dataset_bits": k * math.log2(n),
        "h1_bits": h1,
        "n_tokens": k,
        "n_predicted": predicted,
        "vocab_size": n,
        "n_params": stats["n_params"],
        "n_params_used": stats["n_params_used"],
        "eval_seq_len": stats["seq_len"],
        "eval_overlap": stats["overlap"],
        **({"eval_limit": stats["limit"]} if "limit" in stats else {}),
    }
    _per_param(out, "dataset_bits", stats)
    if "entropy" in which:
        out["h2_bits"] = stats["entropy_nats"] / LN2
        out["absorbed_bits_entropy"] = h1 - out["h2_bits"]
        out["absorbed_bits_entropy_per_token"] = out["absorbed_bits_entropy"] / predicted
        _per_param(out, "absorbed_bits_entropy", stats)
    if "ce" in which:
        out["loss_bits"] = stats["loss_nats"] / LN2
        out["absorbed_bits_ce"] = h1 - out["loss_bits"]
        out["absorbed_bits_ce_per_token"] = out["absorbed_bits_ce"] / predicted
        _per_param(out, "absorbed_bits_ce", stats)
    return out


def entropy_capacity(model: nn.Module, data: str | Path | TokenSet, seq_len: int, batch_size: int = 2, overlap: int = 0, **options) -> dict[str, Any]:
    """The paper's measure dH = H1 - H2 in bits (totals, per predicted token, per parameter).

    H2 is the entropy of the prediction, not the loss on the true token: a confidently wrong
    model scores as high as a perfect one. Use `cross_entropy_capacity` for a sound figure.
    """
    stats = token_stats(model, data, seq_len, batch_size, overlap, entropy=True, **options)
    return _token_measures(stats, ("entropy",))


def cross_entropy_capacity(model: nn.Module, data: str | Path | TokenSet, seq_len: int, batch_size: int = 2, overlap: int = 0, **options) -> dict[str, Any]:
    """H1 - sum -log2 p(true token) in bits: the code length the model saves over the uniform
    code, i.e. how much of the sequence it provably stores (negative when it is worse than uniform)."""
    stats = token_stats(model, data, seq_len, batch_size, overlap, entropy=False, **options)
    return _token_measures(stats, ("ce",))


# ----------------------------------------------------------------------------- biographies

def part33_capacity_bits(n_people: int, n_names: int, n_attribute_values: int, name_loss_nats: float, value_loss_nats: float) -> float:
    """Part 3.3's R(F) * P: N*log2(N0 / e^p1) + N*log2(S0 / e^p2), with p1 = name_loss_nats / N and
    p2 = value_loss_nats / N (summed loss per person, natural log)."""
    p1, p2 = name_loss_nats / n_people, value_loss_nats / n_people
    return n_people * (math.log2(n_names) - p1 / LN2) + n_people * (math.log2(n_attribute_values) - p2 / LN2)


def bio_capacity(
    model: nn.Module,
    data: Any,
    seq_len: int,
    batch_size: int = 32,
    chunk: int = 512,
    dtype: torch.dtype = torch.float64,
    device: Any = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Part 3.3's capacity of a model on a biography set, in bits and bits per parameter.

    `data` is a biography directory / TokenSet (its fixed rendering and masks.npy), or a
    (directory, BioRendering) pair to score a fresh rendering. Each biography is scored alone,
    from its <bos>; every token after <bos> is predicted once. `limit`: only an evenly spread
    subset of at most `limit` people is scored (N in the formula is theirs; None: everyone).
    """
    _check_args(seq_len, batch_size, chunk, limit)
    token_set, rendering = _bio_rendering(data, seq_len)
    meta = token_set.meta
    people = evenly_spread(len(rendering.index) - 1, limit)
    n_people = len(people)
    sums, counts, model_vocab = _bio_losses(model, token_set, rendering, people, batch_size, chunk, dtype,
                                            _device_of(model, device))
    n0, s0 = int(meta["n_names"]), int(meta["n_attribute_values"])
    name_loss, value_loss = float(sums["name"]), float(sums["value"])
    capacity = part33_capacity_bits(n_people, n0, s0, name_loss, value_loss)
    param_counts = count_parameters(model, model_vocab, _bio_tokens_used(token_set, rendering.tokens))
    out: dict[str, Any] = {
        "bio_capacity_bits": capacity,
        "bio_people": n_people,
        "bio_n0": n0,
        "bio_s0": s0,
        "bio_name_loss_nats_per_person": name_loss / n_people,  # p1
        "bio_value_loss_nats_per_person": value_loss / n_people,  # p2
        "bio_name_tokens": counts["name"],
        "bio_value_tokens": counts["value"],
        "bio_mean_loss_nats": float(sums["all"]) / max(counts["all"], 1),
        "bio_capacity_bits_per_person": capacity / n_people,
        "dataset_bits": float(meta["dataset_bits"]),
        "part33_max_bits": float(meta["part33_max_bits"]),
        **({"bio_limit": int(limit)} if limit is not None else {}),
        **param_counts,
    }
    _per_param(out, "bio_capacity_bits", param_counts)
    _per_param(out, "dataset_bits", param_counts)
    return out


def _bio_rendering(data: Any, seq_len: int):
    """(token set, rendering) of `bio_capacity`'s data, checked: a biography set, one
    biography per person, none longer than seq_len predictions."""
    from vld.data.knowledge.biographies import BioRendering, read_fixed_rendering  # no torch there

    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], BioRendering):
        token_set, rendering = _open(data[0]), data[1]
    else:
        token_set = _open(data)
        rendering = None
    meta = token_set.meta
    if meta.get("generator") != BIOGRAPHIES:
        fail(str(token_set.path), f"not a biography set (generator {meta.get('generator')!r})")
    if rendering is None:
        rendering = read_fixed_rendering(token_set)
    n_people = len(rendering.index) - 1
    if n_people != int(meta["params"]["people"]):
        fail("data", f"rendering has {n_people} biographies but the set has {meta['params']['people']} people")
    longest = int(np.diff(rendering.index).max())
    if longest - 1 > seq_len:
        fail("seq_len", f"{seq_len} is shorter than the longest biography ({longest - 1} predictions)")
    return token_set, rendering


def _bio_losses(model: nn.Module, token_set: TokenSet, rendering, chosen: np.ndarray, batch_size: int, chunk: int,
                dtype: torch.dtype, device) -> tuple[dict, dict, int | None]:
    """Summed loss (nats) and token counts over the name tokens, the attribute-value tokens and
    all predicted tokens ({"name", "value", "all"}) of the people `chosen` (indices, in order),
    each biography scored alone from its <bos>, batch_size at a time; and the model's
    vocabulary size (None without a batch)."""
    tokens, index = rendering.tokens, rendering.index
    lengths = np.diff(index)
    knowledge_bits = rendering.name_mask.astype(np.int8) + 2 * rendering.value_mask.astype(np.int8)
    sums = {"name": torch.zeros((), dtype=torch.float64, device=device), "value": torch.zeros((), dtype=torch.float64, device=device),
            "all": torch.zeros((), dtype=torch.float64, device=device)}
    counts = {"name": 0, "value": 0, "all": 0}
    model_vocab = None
    with _measuring(model):
        for lo in range(0, len(chosen), batch_size):
            people = chosen[lo : lo + batch_size]
            width = int(lengths[people].max())
            batch = np.zeros((len(people), width), dtype=np.int64)  # right padding: causal models ignore it
            kind = np.full((len(people), width), -1, dtype=np.int8)
            for row, i in enumerate(people):
                a, b = index[i], index[i + 1]
                batch[row, : b - a] = tokens[a:b]
                kind[row, : b - a] = knowledge_bits[a:b]
            batch_t = torch.from_numpy(batch).to(device)
            logits = _logits(model, batch_t[:, :-1], token_set.vocab_size)
            model_vocab = logits.shape[-1]
            target_kind = torch.from_numpy(kind[:, 1:].reshape(-1)).to(device)
            flat = logits.reshape(-1, model_vocab)
            for loss, _, rows in _row_stats(flat, batch_t[:, 1:].reshape(-1), target_kind >= 0, dtype, chunk, entropy=False):
                part = target_kind[rows]
                part = part[part >= 0]
                sums["all"] += loss.sum(dtype=torch.float64)
                sums["name"] += loss[part == 1].sum(dtype=torch.float64)
                sums["value"] += loss[part == 2].sum(dtype=torch.float64)
                counts["all"] += len(loss)
                counts["name"] += int((part == 1).sum())
                counts["value"] += int((part == 2).sum())
            del logits, flat
    return sums, counts, model_vocab


def _bio_tokens_used(token_set: TokenSet, tokens: np.ndarray) -> np.ndarray:
    """Token ids the biographies can contain: those rendered, and for a fresh-rendering set every
    template word and pronoun (any of them can occur in some exposure)."""
    used = np.unique(tokens)
    if token_set.meta["params"].get("mode") == "fresh":
        from vld.data.knowledge.biographies import BiographyRenderer

        lists = BiographyRenderer(token_set.path).lists
        words = [t for templates in lists.templates.values() for tpl in templates for t in tpl if not isinstance(t, str)]
        used = np.union1d(used, np.array(words + list(lists.ids["pronouns"]), dtype=np.int64))
    return used


# ----------------------------------------------------------------------------- pipeline entry

def all_knowledge_measures(model: nn.Module, data: str | Path | TokenSet, seq_len: int, batch_size: int = 2, overlap: int = 0, **options) -> dict[str, Any]:
    """Every measure that applies to the data set, as one flat dict (one streaming pass).

    Random tokens: dataset_bits, h1_bits, h2_bits, loss_bits, absorbed_bits_entropy[_per_token,
    _per_param, _per_param_used], absorbed_bits_ce[...], n_params, n_params_used, ...
    Biographies: the keys of `bio_capacity` (bio_capacity_bits[_per_param, _per_param_used], ...).
    """
    token_set = _open(data)
    generator = token_set.meta.get("generator")
    if generator == BIOGRAPHIES:
        return bio_capacity(model, token_set, seq_len, batch_size=batch_size, **options)
    if generator != RANDOM_TOKENS:
        fail(str(token_set.path), f"no knowledge measure for data made by {generator!r}")
    stats = token_stats(model, token_set, seq_len, batch_size, overlap, entropy=True, **options)
    return _token_measures(stats, ("entropy", "ce"))


def depth_use_inputs(token_dir, seq_len: int, windows: int, batch_size: int = 8):
    """(batches, score_fn, chance, n) for vld.eval.depth_use on a knowledge set: up to `windows`
    of the measure's own non-overlapping windows (eval_windows: aligned as in training, so
    memorised context is intact), evenly picked; metric `loss` = mean next-token cross-entropy
    (nats) per window; chance = log of the vocabulary (uniform guessing)."""
    import math

    from vld.data.tokens import TokenSet

    token_set = TokenSet.open(token_dir)
    starts, _, length = eval_windows(len(token_set.tokens), seq_len)
    picked = starts[np.unique(np.linspace(0, len(starts) - 1, min(windows, len(starts))).round().astype(np.int64))]
    tokens = torch.as_tensor(np.stack([np.asarray(token_set.tokens[s:s + length + 1], dtype=np.int64)
                                       for s in picked]))
    batches = [{"tokens": tokens[i:i + batch_size, :-1], "targets": tokens[i:i + batch_size, 1:]}
               for i in range(0, len(tokens), batch_size)]

    def score(logits, batch):
        per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(),
                                                      reduction="none")
        return {"loss": per_token.view(batch["targets"].shape).mean(dim=1).double()}

    return batches, score, {"loss": math.log(token_set.vocab_size)}, len(tokens)
