"""The paper's own numbers (arXiv 2506.18233), as data, for the report's "paper" columns.

Layers are 1-based in the paper; keys here use the project's conventions:
pattern names `base`, `cycle`, `sequence`, `inverse_cycle`; `k` = extra copies (VLD xk);
test names `op15`, `op20`, `op21`; model sizes as base-layer counts.
"""

from __future__ import annotations

PAPER = "Beyond Parameters: Exploring Virtual Logic Depth for Scaling Laws (arXiv 2506.18233)"

# Table 1: iGSM answer accuracy (%), trained from scratch, 500 test problems per test.
# Key: (pattern, k) -> {(base_layers, test): accuracy %}.
TABLE1_COLUMNS: tuple[tuple[int, str], ...] = ((4, "op15"), (4, "op20"), (4, "op21"), (8, "op15"))
TABLE1_N_TEST = 500
_TABLE1_ROWS = {
    ("base", 0): (46.3, 21.8, 21.2, 60.5),
    ("cycle", 1): (54.9, 26.4, 26.2, 62.0),
    ("cycle", 2): (62.1, 30.4, 35.4, 63.3),
    ("cycle", 3): (61.6, 30.8, 32.0, 61.0),
    ("cycle", 4): (65.7, 39.2, 33.0, 66.8),
    ("cycle", 5): (70.7, 43.8, 40.2, None),
    ("sequence", 1): (50.7, 25.6, 21.2, 59.2),
    ("sequence", 2): (51.2, 27.0, 22.2, 62.1),
    ("sequence", 3): (55.5, 28.0, 25.0, 62.9),
    ("inverse_cycle", 1): (43.9, 17.4, 15.8, 53.3),
    ("inverse_cycle", 2): (50.8, 24.2, 18.2, 62.0),
    ("inverse_cycle", 3): (54.8, 25.2, 22.2, 62.8),
}
TABLE1: dict[tuple[str, int], dict[tuple[int, str], float]] = {
    row: {col: value for col, value in zip(TABLE1_COLUMNS, values) if value is not None}
    for row, values in _TABLE1_ROWS.items()
}

# Native (untied) depth at op15: 4 and 8 layers are Table 1's base rows; 12 layers is in the
# text; 16 layers is only plotted (no number given).
NATIVE_OP15: dict[int, float] = {4: 46.3, 8: 60.5, 12: 61.15}

# Table 7: layer-subset reuse on the 8-layer model, cycle, op15 accuracy (%).
# Keys: "none" (no VLD), "all" (cycle over all layers), "first_half" (paper layers 1-4,
# 0-based 0..3), "second_half" (paper layers 5-8, 0-based 4..7). Exact orders not given.
TABLE7_BASE_LAYERS = 8
TABLE7: dict[str, float] = {"none": 60.5, "all": 62.0, "first_half": 54.2, "second_half": 64.2}
TABLE7_LABELS: dict[str, str] = {
    "none": "no VLD",
    "all": "all layers (1-8)",
    "first_half": "layers 1-4 only",
    "second_half": "layers 5-8 only",
}

# Table 2: post-training retrofit of LLaMA-3.2-3B-Instruct with LoRA (%), Base -> Cycle.
TABLE2: dict[str, dict[str, float]] = {
    "Math500": {"base": 30.40, "cycle": 35.40},
    "GPQA": {"base": 29.80, "cycle": 32.32},
    "AIME": {"base": 3.33, "cycle": 6.67},
    "HumanEval pass@1": {"base": 37.79, "cycle": 39.52},
    "MBPP": {"base": 38.36, "cycle": 40.22},
}

# Figure 4 prints no numbers; what it shows, in words.
FIGURE4_NOTE = (
    "paper (Figure 4, no numbers printed): without VLD, absorbed bits rise with parameter count "
    "(5M/10M/15M/20M labels); at fixed parameters they stay nearly constant across patterns and "
    "x1..x3, for 5M and 20M. Paper measure: dH = k*log2(n) - sum of prediction entropies."
)
