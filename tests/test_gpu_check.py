"""bench/gpu_check.py, the one-shot device check, dry-run on CPU with small sizes (the
torch.compile sections are left out: they need a C++ compiler and most of a minute cold).
Its checks must hold here too, so the script cannot rot between GPU loans."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--small",
                    "--sections", "env,exact,generate,memory", "--out", str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    results = json.loads(out.read_text())
    assert [name for name in results if name != "meta"] == ["env", "exact", "generate", "memory"]
    assert not [name for name, section in results.items() if "error" in section]
    exact = results["exact"]
    assert exact["fp32_vs_fp64_logits_maxabs"] < 1e-5
    for block in ("gpt2", "llama"):
        assert exact[f"{block}_cycle_x2_vs_unrolled_logits_maxabs"] == 0.0
        assert exact[f"{block}_shared_grad_vs_sum_of_copies_maxabs"] < 1e-6
    assert results["generate"]["all_agree"] is True
    assert results["memory"]["fp32_grad_ckpt_vs_not_maxabs"] == 0.0
    assert not list(tmp_path.glob(".gpu_check.*"))  # the atomic write left no temp file
