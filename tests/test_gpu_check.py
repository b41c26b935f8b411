"""bench/gpu_check.py, the one-shot device check, dry-run on CPU with small sizes (the
torch.compile sections are left out: they need a C++ compiler and most of a minute cold).
Its checks must hold here too, so the script cannot rot between GPU loans."""

import json
import os
import shutil
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


def test_gpu_pipeline_runs_the_stages_dvc_would_run(dvc_project):
    """bench/gpu_pipeline.sh reads its stage list from dvc.yaml: the same stages, in an order
    where each stage's inputs come first."""
    root = SCRIPT.parents[1]
    shutil.copy(root / "conf" / "profiles" / "tiny.yaml", dvc_project / "params.yaml")
    env = dict(os.environ, VLD_LIST_STAGES="1", PY=sys.executable, DVC_NO_ANALYTICS="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    listed = subprocess.run(["bash", str(root / "bench" / "gpu_pipeline.sh"), str(dvc_project / "out")], cwd=dvc_project,
                            env=env, check=True, capture_output=True, text=True, timeout=120).stdout.splitlines()
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=dvc_project, env=env, check=True, timeout=120)
    names = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=dvc_project, env=env, check=True,
                           capture_output=True, text=True, timeout=120).stdout.split()
    assert len(listed) == len(names) == 23  # the tiny profile's stages
    # stage names are <module stem>[_<family>]@<variant> (a retrofit's: <family>@<variant>); each
    # command names its module and variant
    as_names = []
    for command in listed:
        module, *args = command.split()
        flags = dict(zip(args[::2], args[1::2]))
        family = flags.get("--family") if module in ("pretrain", "evaluate") else None
        key = flags.get("--variant") or flags.get("--dataset")
        if module == "retrofit":  # a retrofit stage is named after its family
            module = flags["--family"]
        name = module + (f"_{family}" if family else "") + (f"@{key}" if key else "")
        as_names.append(name if module != "data_igsm" else f"data_igsm_{flags['--split']}")
    assert as_names == names
