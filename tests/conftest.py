"""Fixtures shared by the tests that run the DVC pipeline in a temporary repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def dvc_project(tmp_path: Path) -> Path:
    """tmp_path/repo holding the project's DAG: dvc.yaml, .dvcignore and src/. The stages run the
    installed package; the src/ copy is what DVC hashes as their code dependencies, so a test
    may edit it. No params.yaml, no git or DVC repository yet."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return repo
