"""Stages `data_igsm_train` and `data_igsm_tests`: the iGSM training set and the test sets.

    python -m vld.pipeline.data_igsm --split train     # -> data/igsm/train/
    python -m vld.pipeline.data_igsm --split tests     # -> data/igsm/tests/<name>/ per test set

Generator settings: data.igsm.generator (shared by both, so train and tests share one lexicon
and tokenizer); sizes and seeds: data.igsm.train {n, seed} and data.igsm.tests.<name> {op, n,
seed} (every test problem has exactly `op` operations). Records go to
results/records/data_igsm_<split>.json.
"""

from __future__ import annotations

from pathlib import Path

from vld.errors import run_cli
from vld.pipeline import paths, shared, tracking
from vld.pipeline.params import load_pipeline


def generate(igsm, split: str, spec, out: Path) -> None:
    """One iGSM token set through vld.data.igsm (imported here: it is the heavy part)."""
    from vld.data.igsm import generate_dataset

    generate_dataset(igsm.generator, split, spec.n, spec.seed, out, op=spec.op)


def main(argv: list[str] | None = None) -> int:
    parser = shared.parser("data_igsm", __doc__.splitlines()[0], variant=False)
    parser.add_argument("--split", required=True, choices=("train", "tests"))
    args = parser.parse_args(argv)
    pipeline = load_pipeline(args.params)
    igsm = pipeline.data["igsm"]
    out = paths.IGSM_TRAIN if args.split == "train" else paths.IGSM_TESTS
    from vld.atomic import atomic_dir, check_replaceable

    check_replaceable(out)
    params = {f"generator.{k}": v for k, v in igsm.generator_settings.items()}
    if args.split == "train":
        params.update({f"train.{k}": v for k, v in igsm.train.to_dict().items()})
    else:
        params.update({f"tests.{name}.{k}": v for name, t in igsm.tests.items() for k, v in t.to_dict().items()})
    with tracking.tracked(pipeline, f"data_igsm_{args.split}", None, params, {}) as run:
        from vld.data.tokens import TokenSet

        if args.split == "train":
            generate(igsm, "train", igsm.train, out)
            shared.keep_if_unchanged(pipeline, out, data=("igsm", None))
            sets = {"igsm_train": out}
        else:
            with atomic_dir(out) as tmp:
                for name, test in igsm.tests.items():
                    generate(igsm, "test", test, tmp / name)
                pipeline.check_unchanged(data=("igsm", None))
            sets = {name: out / name for name in igsm.tests}
        for name, path in sets.items():
            tokens = TokenSet.open(path)
            run.log_metrics({f"{name}.problems": len(tokens), f"{name}.tokens": len(tokens.tokens),
                             f"{name}.vocab_size": tokens.vocab_size})
            run.add_artifact(path / "meta.json")
        run.set_tags(shared.data_tags(sets))
        run.finish()
    shared.summary(f"data_igsm_{args.split}", out)
    return 0


if __name__ == "__main__":
    run_cli(main)
