"""Small iGSM token sets that tests generate (train and one test set)."""

from __future__ import annotations

from pathlib import Path


def igsm_train_and_test(root: Path, n_train: int, n_test: int, test_op: int) -> dict[str, Path]:
    """A small iGSM train set and one test set of op `test_op` under root (op <= 4, <= 6 edges)."""
    from vld.data.igsm import IgsmConfig, generate_dataset

    config = IgsmConfig(max_op=4, max_edge=6)
    train = generate_dataset(config, "train", n_train, 2, root / "train", workers=1, progress=False)
    test = generate_dataset(config, "test", n_test, 0, root / "test", workers=1, op=test_op, progress=False)
    return {"train": Path(train), "test": Path(test)}
