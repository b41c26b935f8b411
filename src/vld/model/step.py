"""The one loop over a schedule, and the three parts of a model it drives.

A model that visits its layers in a schedule (VLDTransformer, the retrofitted Llama) offers:

    inputs = model.prepare(tokens, ...)       # embeddings (inputs.embedding = h_0), mask,
                                              # positions, KV cache: once per call
    state = model.step(state, visit, inputs)  # virtual layer `visit`: h_visit -> h_visit+1
    logits = model.readout(state)             # final norm and head

`forward` is prepare, `run_visits` over every visit, readout. The depth-use ablations, early
exit, the depth probe and unrolling run the same parts, so a model whose step does more than
`layer(state)` (e.g. adds the input embedding at some visits) is measured as it computes.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from vld.model.adapters import check_visit_adapters
from vld.model.backend import Backend


def run_visits(model, inputs, state: torch.Tensor, visits: Iterable[int], hidden: list | None = None) -> torch.Tensor:
    """`state` after `model.step` at each of `visits` in turn; each new state is appended to
    `hidden` when given. With the model's backend asking for activation checkpointing (and
    training, no cache, gradients on) each visit is recomputed in backward."""
    recompute = (model.backend.activation_checkpointing and model.training and inputs.cache is None
                 and torch.is_grad_enabled())
    for visit in visits:
        if recompute:
            # Non-reentrant: a layer run several times per step is fine under DDP.
            state = checkpoint(model.step, state, visit, inputs, use_reentrant=False)
        else:
            state = model.step(state, visit, inputs)
        if hidden is not None:
            hidden.append(state)
    return state


class VisitingModel:
    """What both models that run a schedule of visits set the same way (mixed into their
    nn.Module): per-visit adapters and the backend."""

    def set_visit_adapters(self, names: Sequence[str] | None) -> None:
        """Run visit v with LoRA adapter names[v] active in its layer (None: every adapter)."""
        self.visit_adapters = check_visit_adapters(names, self.effective_depth)

    def set_backend(self, backend: Backend) -> None:
        """Run with `backend` from now on (parameters and results, up to summation order, unchanged)."""
        if not isinstance(backend, Backend):
            raise TypeError(f"set_backend: expected a vld.model.Backend, got {type(backend).__name__}")
        self.backend = backend.validate()


__all__ = ["VisitingModel", "run_visits"]
