"""The environment the tests' subprocesses (dvc, stages) run in: this venv's tools first, no
tracking settings of the caller's, quiet warnings, a git identity for DVC's commits."""

import os
import sys
from pathlib import Path


def repo_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VLD_TRACKING")}
    env.update(DVC_NO_ANALYTICS="1", PYTHONWARNINGS="ignore", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@e",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@e")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env
