"""Stage `data_khop@<dataset>`: the k-hop test sets of one dataset named under data.khop.

    python -m vld.pipeline.data_khop --dataset kh64

One set of `test_sequences` sequences per hop count in min_hops..max_hops (vld.data.khop),
written to data/khop/<dataset>/k<hops>/, with the record
results/records/data_khop@<dataset>.json. Training needs no files: its sequences are generated
from (seed, step) while it runs.
"""

from __future__ import annotations

from vld.errors import run_cli
from vld.pipeline import paths, shared, tracking


def main(argv: list[str] | None = None) -> int:
    args, pipeline, spec = shared.dataset_stage("data_khop", __doc__.splitlines()[0], "khop", argv)
    out = paths.khop_tests_dir(args.dataset)
    from dataclasses import asdict

    from vld.atomic import atomic_dir, check_replaceable

    check_replaceable(out)
    with tracking.tracked(pipeline, "data_khop", args.dataset, {f"data.{k}": v for k, v in asdict(spec).items()},
                        {"vld.data": args.dataset}) as run:
        from vld.data.khop import write_test_sets

        with atomic_dir(out) as tmp:
            meta = write_test_sets(spec, tmp)
            pipeline.check_unchanged(data=("khop", args.dataset))
        run.log_metrics({"vocab_size": spec.vocab_size, "hop_counts": len(meta["sets"]),
                         "sequences": sum(entry["sequences"] for entry in meta["sets"].values())})
        run.add_artifact(out / "meta.json")
        run.finish()
    shared.summary(f"data_khop@{args.dataset}", out)
    return 0


if __name__ == "__main__":
    run_cli(main)
