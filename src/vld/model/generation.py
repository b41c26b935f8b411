"""Batched greedy decoding shared by every model vld generates with (its own transformer and
retrofitted Hugging Face models): prompt checks, left padding, and the token loop."""

from __future__ import annotations

from typing import Callable

import torch

from vld.errors import fail


def check_request(prompts: list[list[int]], max_new_tokens: int) -> None:
    if not prompts or any(len(p) == 0 for p in prompts):
        fail("generate.prompts", "needs at least one non-empty prompt")
    if max_new_tokens < 0:
        fail("generate.max_new_tokens", f"must be >= 0, got {max_new_tokens}")


def left_pad(prompts: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned in one [B, T] tensor (so every row's next token is at -1), and the mask."""
    batch, longest = len(prompts), max(len(p) for p in prompts)
    tokens = torch.zeros(batch, longest, dtype=torch.long, device=device)
    mask = torch.zeros(batch, longest, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, longest - len(prompt):] = 1
    return tokens, mask


def greedy_decode(
    next_logits: Callable[[torch.Tensor | None], torch.Tensor], batch: int, max_new_tokens: int, eos_id: int | None
) -> list[list[int]]:
    """Run the greedy loop. `next_logits(None)` reads the prompts, `next_logits(tokens[B])` appends
    the chosen tokens; both return the logits of the next position, [B, V]. A row stops after
    eos (kept); the model is not called again once every row is done or the budget is spent."""
    outputs: list[list[int]] = [[] for _ in range(batch)]
    if max_new_tokens == 0:
        return outputs
    done = [False] * batch
    logits = next_logits(None)
    for step in range(max_new_tokens):
        chosen = logits.argmax(-1)
        for row, token in enumerate(chosen.tolist()):
            if not done[row]:
                outputs[row].append(token)
                done[row] = eos_id is not None and token == eos_id
        if all(done) or step == max_new_tokens - 1:
            break
        logits = next_logits(chosen)
    return outputs
