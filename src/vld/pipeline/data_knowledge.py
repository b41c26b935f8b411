"""Stage `data_knowledge@<dataset>`: one knowledge dataset named under data.knowledge.

    python -m vld.pipeline.data_knowledge --dataset rt16k

kind random_tokens: k tokens drawn IID uniformly from n values (vld.data.knowledge.random_tokens);
kind biographies: `people` synthetic biographies (vld.data.knowledge.biographies).
Writes data/knowledge/<dataset>/ (a token set) and results/records/data_knowledge@<dataset>.json.
"""

from __future__ import annotations

from vld.errors import run_cli
from vld.pipeline import paths, shared, tracking


def main(argv: list[str] | None = None) -> int:
    args, pipeline, spec = shared.dataset_stage("data_knowledge", __doc__.splitlines()[0], "knowledge", argv)
    out = paths.knowledge_dir(args.dataset)
    from dataclasses import asdict

    from vld.atomic import check_replaceable

    check_replaceable(out)
    params = {f"data.{key}": value for key, value in asdict(spec).items()}
    with tracking.tracked(pipeline, "data_knowledge", args.dataset, params, {"vld.data.kind": spec.kind}) as run:
        spec.make(out)
        shared.keep_if_unchanged(pipeline, out, data=("knowledge", args.dataset))
        from vld.data.tokens import TokenSet

        tokens = TokenSet.open(out)
        run.set_tags(shared.data_tags({args.dataset: out}))
        run.log_metrics({"n_tokens": len(tokens.tokens), "n_samples": len(tokens), "vocab_size": tokens.vocab_size,
                         **{key: value for key, value in tokens.meta.items() if key in ("dataset_bits", "bits_per_token")}})
        run.add_artifact(out / "meta.json")
        run.finish()
    shared.summary(f"data_knowledge@{args.dataset}", out)
    return 0


if __name__ == "__main__":
    run_cli(main)
