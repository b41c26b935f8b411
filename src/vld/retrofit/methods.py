"""The retrofit fine-tuning methods and their checks (no torch import: params validation
uses them)."""

from __future__ import annotations

from vld.errors import fail

METHODS = ("full", "lora", "lora_per_visit")  # full fine-tuning, shared LoRA, LoRA per visit
DEFAULT_LORA_RANK = 4  # the paper does not give one


def check_method(method, lora_rank, where: str) -> None:
    """One-line UserError at `<where>.method` / `<where>.lora_rank` for an unknown method or a
    rank that is not a positive integer (checked for every method: "full" ignores it)."""
    if not isinstance(method, str) or method not in METHODS:
        shown = "nothing" if method is None else repr(method)
        fail(f"{where}.method", f"unknown method {shown} (known: {', '.join(METHODS)})")
    if not isinstance(lora_rank, int) or isinstance(lora_rank, bool) or lora_rank < 1:
        fail(f"{where}.lora_rank", f"must be a positive integer, got {lora_rank!r}")


__all__ = ["DEFAULT_LORA_RANK", "METHODS", "check_method"]
