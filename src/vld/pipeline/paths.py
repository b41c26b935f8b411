"""Where the pipeline's data and results live, relative to the repository root (where DVC runs
every stage). dvc.yaml declares the same paths as outs, so the two change together; data/README.md
and results/README.md say which stage writes what."""

from __future__ import annotations

from pathlib import Path

IGSM_TRAIN = Path("data/igsm/train")
IGSM_TESTS = Path("data/igsm/tests")
KNOWLEDGE_DATA = Path("data/knowledge")
KHOP_DATA = Path("data/khop")
SFT_DATA = Path("data/sft")
PRETRAIN = Path("results/pretrain")
RESULTS = Path("results")
EVAL = Path("results/eval")
REPORT = Path("results/report")
# Checkpoints of running trainings. DVC deletes a stage's outputs before running it, so a
# killed training resumes from here; the directory name is a hash of everything that
# determines the run, so a changed config never resumes a stale checkpoint.
WORK = Path(".vld-work")


def knowledge_dir(name: str) -> Path:
    return KNOWLEDGE_DATA / name


def khop_tests_dir(name: str) -> Path:
    return KHOP_DATA / name


def sft_dir(name: str) -> Path:
    return SFT_DATA / name


# A variant's stage writes one directory (DVC's out) with one entry per seed in it.
def seed_name(seed: int) -> str:
    return f"seed{seed}"


def pretrain_dir(family: str, variant: str) -> Path:
    return PRETRAIN / family / variant


def pretrain_model_dir(family: str, variant: str, seed: int) -> Path:
    return pretrain_dir(family, variant) / seed_name(seed)


def retrofit_dir(family: str, variant: str) -> Path:
    """A retrofit family's variant: results/<family>/<variant> (results/retrofit/<variant> for iGSM)."""
    return RESULTS / family / variant


def retrofit_model_dir(family: str, variant: str, seed: int) -> Path:
    return retrofit_dir(family, variant) / seed_name(seed)


def eval_dir(family: str, variant: str) -> Path:
    return EVAL / family / variant


def eval_file(family: str, variant: str, seed: int) -> Path:
    return eval_dir(family, variant) / f"{seed_name(seed)}.json"


def seed_key(variant: str, seed: int) -> str:
    """The tracking key of one seed of a variant: its record is results/records/<stage>@<key>.json."""
    return f"{variant}/{seed_name(seed)}"
