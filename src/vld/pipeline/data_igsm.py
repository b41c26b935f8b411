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
from vld.pipeline import _stage
from vld.pipeline.params import load_pipeline


def igsm_config(generator: dict, where: str = "data.igsm.generator"):
    """The generator's IgsmConfig from params.yaml: `preset: med|hard` (optional) + any field."""
    import dataclasses

    from vld.data.igsm.generator import PRESETS, IgsmConfig
    from vld.errors import fail

    values = dict(generator or {})
    preset = values.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        fail(f"{where}.preset", f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    known = [f.name for f in dataclasses.fields(IgsmConfig)]
    for key in values:
        if key not in known:
            fail(f"{where}.{key}", f"unknown key (known: preset, {', '.join(known)})")
    if isinstance(values.get("levels"), list):
        values["levels"] = tuple(values["levels"])
    base = PRESETS[preset] if preset is not None else IgsmConfig()
    return dataclasses.replace(base, **values).validate(where)


def generate(generator: dict, split: str, n: int, seed: int, out: Path, op: int | None = None) -> None:
    """One iGSM token set through vld.data.igsm (imported here: it is the heavy part)."""
    from vld.data.igsm import generate_dataset

    generate_dataset(igsm_config(generator), split, n, seed, out, op=op)


def main(argv: list[str] | None = None) -> int:
    parser = _stage.parser("data_igsm", __doc__.splitlines()[0], variant=False)
    parser.add_argument("--split", required=True, choices=("train", "tests"))
    args = parser.parse_args(argv)
    pipeline = load_pipeline(args.params)
    igsm = pipeline.igsm
    from vld.errors import fail

    if not igsm:
        fail("data.igsm", "missing from params.yaml")
    generator = igsm.get("generator") or {}
    out = _stage.IGSM_TRAIN if args.split == "train" else _stage.IGSM_TESTS
    from vld.atomic import atomic_dir, check_replaceable

    check_replaceable(out)
    section = igsm["train"] if args.split == "train" else igsm["tests"]
    params = {**{f"generator.{k}": v for k, v in generator.items()},
              **({f"train.{k}": v for k, v in section.items()} if args.split == "train" else
                 {f"tests.{name}.{k}": v for name, t in section.items() for k, v in t.items()})}
    with _stage.tracked(pipeline, f"data_igsm_{args.split}", None, params, {}) as run:
        from vld.data.tokens import TokenSet

        if args.split == "train":
            generate(generator, "train", section["n"], section.get("seed", 0), out)
            sets = {"igsm_train": out}
        else:
            with atomic_dir(out) as tmp:
                for name, test in section.items():
                    generate(generator, "test", test["n"], test.get("seed", 0), tmp / name, op=test["op"])
            sets = {name: out / name for name in section}
        for name, path in sets.items():
            tokens = TokenSet.open(path)
            run.log_metrics({f"{name}.problems": len(tokens), f"{name}.tokens": len(tokens.tokens),
                             f"{name}.vocab_size": tokens.vocab_size})
            run.add_artifact(path / "meta.json")
        run.set_tags(_stage.data_tags(sets))
        run.finish()
    return 0


if __name__ == "__main__":
    run_cli(main)
