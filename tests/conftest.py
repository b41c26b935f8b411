"""Fixtures shared by the tests: the DVC pipeline in a temporary repository, the tiny training set."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    """tmp_path/repo holding the project's DAG: dvc.yaml, .dvcignore, src/ and conf/plots/ (the plot
    templates dvc.yaml names). The stages run the
    installed package; the src/ copy is what DVC hashes as their code dependencies, so a test
    may edit it. No params.yaml, no git or DVC repository yet."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "conf/plots", repo / "conf/plots")
    return repo


@pytest.fixture
def one_thread():
    """One torch thread for the test: its results do not depend on the core count, and tiny
    matmuls are not slowed down by threads waiting for each other on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """The golden run's token set (tests/golden_loss.py)."""
    from golden_loss import write_tiny_token_set

    return write_tiny_token_set(tmp_path_factory.mktemp("tiny") / "data")
