"""Stage `data_sft@<dataset>`: tokenize one SFT chat set named under data.sft.

    python -m vld.pipeline.data_sft --dataset chat

The files of `data.sft.<dataset>.files` (JSON lines or parquet, chat "messages" form), tokenized
by the tokenizer and chat template of `data.sft.<dataset>.source` (a local Hugging Face
checkpoint; nothing downloaded) into data/sft/<dataset>/: a token set labelled on the
assistant's tokens, with the mixture of one data epoch (vld.data.sft). A malformed line is one
error line naming file:line. Record: results/records/data_sft@<dataset>.json.
"""

from __future__ import annotations

from vld.errors import run_cli
from vld.pipeline import paths, shared, tracking


def checkpoint_sha256(path) -> str:
    """One hash of a checkpoint directory's weights, config and tokenizer files."""
    import hashlib
    from pathlib import Path

    files = sorted(p for p in Path(path).iterdir() if p.is_file() and p.suffix in (".safetensors", ".json", ".model"))
    return hashlib.sha256("".join(f"{p.name}:{tracking.file_sha256(p)}" for p in files).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    shared.offline()
    args, pipeline, spec = shared.dataset_stage("data_sft", __doc__.splitlines()[0], "sft", argv)
    out = paths.sft_dir(args.dataset)
    from vld.atomic import check_replaceable
    from vld.retrofit.sources import inspect_source

    check_replaceable(out)
    info = inspect_source(spec.source, f"data.sft.{args.dataset}.source")  # weights readable, before the tokenizing
    source_sha256 = checkpoint_sha256(info.path)
    with tracking.tracked(pipeline, "data_sft", args.dataset, {
            "data.source": spec.source, "data.dir": spec.dir, "data.max_tokens": spec.max_tokens, "data.seed": spec.seed,
            "data.files": ",".join(f"{file.path}:{file.weight:g}" for file in spec.files)},
                          {"vld.data": args.dataset}) as run:
        from vld.data.sft import make_sft

        meta = make_sft(spec, out, f"data.sft.{args.dataset}", source_sha256)
        shared.keep_if_unchanged(pipeline, out, ("sft", args.dataset))
        run.log_metrics({"conversations": sum(meta["conversations_per_file"]), "mixture_size": meta["mixture_size"],
                         "assistant_tokens": meta["assistant_tokens"], "conversations_cut": meta["conversations_cut"]})
        run.log_datasets([tracking.dataset_entry(args.dataset, out, "training")])
        run.add_artifact(out / "meta.json")
        run.finish()
    shared.summary(f"data_sft@{args.dataset}", out)
    return 0


if __name__ == "__main__":
    run_cli(main)
