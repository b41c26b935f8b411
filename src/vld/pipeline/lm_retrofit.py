"""Stage `lm_retrofit@<variant>`: give a local Hugging Face Llama a reuse schedule and fine-tune
it on chat data (the paper's Table 2 setting).

    python -m vld.pipeline.lm_retrofit --variant cycle

The checkpoint is the variant's SFT set's `source` (data.sft.<data>.source, local files only);
the data is data/sft/<data> (stage data_sft), the loss on the assistant's tokens only.
`schedule: {pattern: base}` is the paper's "Base" row: the untouched model fine-tuned the same
way. Method `lora` (all seven projections of every reused layer, rank `lora_rank`) or `full`;
`train.activation_checkpointing` recomputes each visit in backward. Writes
results/lm_retrofit/<variant>/seed<s>/ {model/ (hf/ with the tokenizer, retrofit.json),
metrics.json, variant.json} and one record per seed.
"""

from __future__ import annotations

import contextlib

from vld.errors import run_cli
from vld.pipeline import paths, shared, tracking
from vld.pipeline.families import FAMILIES
from vld.pipeline.params import load_pipeline
from vld.pipeline.retrofit import finish_seeds, keep_seed
from vld.train.config import check_devices


def main(argv: list[str] | None = None) -> int:
    shared.offline()
    args = shared.parser("lm_retrofit", __doc__.splitlines()[0]).parse_args(argv)
    pipeline = load_pipeline(args.params)
    variant = pipeline.variant("lm_retrofit", args.variant)
    family = FAMILIES["lm_retrofit"]
    check_devices(variant.train, "hardware")
    out = paths.retrofit_dir("lm_retrofit", variant.name)
    rank0 = tracking.is_global_zero()

    from vld.atomic import atomic_dir, check_replaceable
    from vld.data.tokens import TokenSet, recorded_sha256
    from vld.retrofit.api import MODEL_DIR, train_retrofit, validate_variant
    from vld.train.run import TimeEstimate
    from vld.retrofit.sources import inspect_source

    if rank0:
        check_replaceable(out)
    source_key = f"data.sft.{variant.data}.source"
    info = inspect_source(variant.source, source_key)  # the weights readable, before any compute
    info, order = validate_variant(info, variant.schedule_spec, variant.method, variant.lora_rank,
                                   pipeline.patterns, variant.key)
    data_dir = family.train_data(variant)
    tokens = TokenSet.open(data_dir)
    if tokens.meta.get("spec", {}).get("source") != variant.source:
        from vld.errors import fail

        fail(str(data_dir), f"was tokenized for another checkpoint than {source_key}; run its data_sft stage (dvc repro)")
    from vld.data.sft import load_tokenizer

    tokenizer = load_tokenizer(variant.source, source_key)
    source_sha256 = tokens.meta.get("source_sha256")  # data_sft hashed the checkpoint it tokenized with
    data_tags = shared.data_tags({variant.data: data_dir})

    seeds, runs, works = variant.per_seed(), [], []
    with (atomic_dir(out) if rank0 else contextlib.nullcontext()) as tmp, contextlib.ExitStack() as stack:
        for seeded in seeds:
            work = shared.work_dir("lm_retrofit", variant.name, {
                "variant": seeded.to_dict(), "train": seeded.train.to_dict(), "source": source_sha256,
                "data": recorded_sha256(data_dir)})
            run = stack.enter_context(tracking.tracked(
                pipeline, "lm_retrofit", paths.seed_key(variant.name, seeded.seed), seeded.flat_params(),
                {**seeded.tags(), **data_tags, "vld.source.sha256": source_sha256, "vld.variant": variant.name}))
            run.log_datasets([tracking.dataset_entry(variant.data, data_dir, "training")])
            metrics = train_retrofit(info.path, info, order, seeded.method, seeded.lora_rank,
                                     family.datamodule(seeded, pipeline), seeded.train, work,
                                     logger=run.lightning_logger(), backend=seeded.train.backend,
                                     callbacks=[TimeEstimate(f"lm_retrofit@{variant.name} seed {seeded.seed}")])
            if not rank0:
                continue
            tokenizer.save_pretrained(str(work / MODEL_DIR / "hf"))  # a complete checkpoint: lm-eval's hf reads it
            keep_seed(pipeline, seeded, work, tmp, run, metrics)
            runs.append(run)
            works.append(work)
        if not rank0:
            return 0
    finish_seeds("lm_retrofit", variant, family, seeds, runs, works, out)
    return 0


if __name__ == "__main__":
    run_cli(main)
