"""Stage `retrofit@<variant>`: give a pretrained reasoning model a reuse schedule, fine-tune it.

    python -m vld.pipeline.retrofit --variant cycle_x1

The source is the reasoning variant named by `retrofit.variants.<variant>.source`: seed s
fine-tunes the source's seed s (results/pretrain/reasoning/<source>/seed<s>/model.pt); the
fine-tuning data is data/igsm/train. A variant with `schedule: {pattern: base}` is the paper's
"Base" row: the untouched model fine-tuned with the same budget. Writes
results/retrofit/<variant>/seed<s>/ {model/, metrics.json, variant.json} and one record per seed,
results/records/retrofit@<variant>/seed<s>.json (vld.retrofit.api does the work).
"""

from __future__ import annotations

import contextlib
import shutil

from vld.errors import run_cli
from vld.pipeline import paths, shared, tracking
from vld.pipeline.params import load_pipeline
from vld.train.config import check_devices


def main(argv: list[str] | None = None) -> int:
    args = shared.parser("retrofit", __doc__.splitlines()[0]).parse_args(argv)
    pipeline = load_pipeline(args.params)
    variant = pipeline.variant("retrofit", args.variant)
    check_devices(variant.train, "hardware")  # a GPU asked for and missing: fail now, before any run
    out = paths.retrofit_dir(variant.name)
    rank0 = tracking.is_global_zero()

    from vld.atomic import check_replaceable

    if rank0:
        check_replaceable(out)
    from vld.retrofit.sources import inspect_source

    import hashlib

    seeds, sources = variant.per_seed(), []
    for seeded in seeds:  # every source checked before any compute
        # the checkpoint file itself: its directory also holds a config.json (ours, not Hugging Face's)
        source = paths.pretrain_model_dir("reasoning", variant.source, seeded.seed) / "model.pt"
        info = inspect_source(source, f"{variant.key}.source")
        sources.append((info, hashlib.sha256(source.read_bytes()).hexdigest()))
    data_tags = shared.data_tags({"igsm_train": paths.IGSM_TRAIN})

    from vld.atomic import atomic_dir, write_json
    from vld.data.tokens import recorded_sha256
    from vld.retrofit.api import MODEL_DIR, METRICS_FILE, retrofit_and_finetune
    from vld.train.run import TimeEstimate

    works = []
    # the other ranks of a multi-process run only train
    with (atomic_dir(out) if rank0 else contextlib.nullcontext()) as tmp, contextlib.ExitStack() as stack:
        runs = []
        for seeded, (info, source_sha256) in zip(seeds, sources):  # one after another: each its own fine-tuning
            work = shared.work_dir("retrofit", variant.name, {
                "variant": seeded.to_dict(), "train": seeded.train.to_dict(),
                "source": source_sha256, "data": recorded_sha256(paths.IGSM_TRAIN)})
            run = stack.enter_context(tracking.tracked(
                pipeline, "retrofit", paths.seed_key(variant.name, seeded.seed), seeded.flat_params(),
                {**seeded.tags(), **data_tags, "vld.source.sha256": source_sha256, "vld.variant": variant.name}))
            run.log_datasets([tracking.dataset_entry("igsm_train", paths.IGSM_TRAIN, "training")])
            metrics = retrofit_and_finetune(info, seeded.schedule_spec, seeded.method, seeded.lora_rank,
                                            str(paths.IGSM_TRAIN), seeded.train, work, patterns=pipeline.patterns,
                                            logger=run.lightning_logger(), backend=seeded.train.backend,
                                            objective=seeded.objective, callbacks=[TimeEstimate(
                                                f"retrofit@{variant.name} seed {seeded.seed}")])
            if not rank0:
                continue
            pipeline.check_unchanged(seeded)
            where = tmp / paths.seed_name(seeded.seed)
            where.mkdir()
            write_json(where / "variant.json", {"variant": seeded.to_dict(), "sha256": seeded.fingerprint()})
            shutil.copytree(work / MODEL_DIR, where / MODEL_DIR)
            shutil.copy2(work / METRICS_FILE, where / METRICS_FILE)
            run.log_metrics({key: value for key, value in metrics.items() if key != "loss_curve"})
            runs.append(run)
            works.append(work)
        if not rank0:
            return 0
    for seeded, run in zip(seeds, runs):  # the outputs are in place: the runs can end
        where = paths.retrofit_model_dir(variant.name, seeded.seed)
        run.log_model(tracking.model_entry(f"retrofit-{variant.name}-seed{seeded.seed}", where,
                                           "vld.retrofit.api.load_retrofit", seeded.flat_params(), run.metrics))
        run.add_artifact(where / METRICS_FILE)
        run.add_artifact(where / MODEL_DIR / "retrofit.json")
        run.finish()
    for work in works:
        shared.drop_work_dir(work)
    shared.summary(f"retrofit@{variant.name}", out, len(seeds), "final loss",
                   [run.metrics.get("final_loss") for run in runs])
    return 0


if __name__ == "__main__":
    run_cli(main)
