"""Stage `retrofit@<variant>`: give a pretrained reasoning model a reuse schedule, fine-tune it.

    python -m vld.pipeline.retrofit --variant cycle_x1

The source is the reasoning variant named by `retrofit.variants.<variant>.source` (its
results/pretrain/reasoning/<source>/model.pt); the fine-tuning data is data/igsm/train. A
variant with `schedule: {pattern: base}` is the paper's "Base" row: the untouched model
fine-tuned with the same budget. Writes results/retrofit/<variant>/ {model/, metrics.json} and
the record results/records/retrofit@<variant>.json (vld.retrofit.api does the work).
"""

from __future__ import annotations

import shutil

from vld.errors import run_cli
from vld.pipeline import paths, shared, tracking
from vld.pipeline.params import load_pipeline
from vld.train.config import check_devices


def main(argv: list[str] | None = None) -> int:
    args = shared.parser("retrofit", __doc__.splitlines()[0]).parse_args(argv)
    pipeline = load_pipeline(args.params)
    variant = pipeline.variant("retrofit", args.variant)
    train_cfg = variant.train
    check_devices(train_cfg, "hardware")  # a GPU asked for and missing: fail now, before any run
    # the checkpoint file itself: its directory also holds a config.json (ours, not Hugging Face's)
    source = paths.pretrain_dir("reasoning", variant.source) / "model.pt"
    out = paths.retrofit_dir(variant.name)
    rank0 = tracking.is_global_zero()

    from vld.atomic import check_replaceable

    if rank0:
        check_replaceable(out)
    from vld.retrofit.sources import inspect_source

    info = inspect_source(source, f"{variant.key}.source")
    schedule = variant.schedule_spec
    tags = {**variant.tags(), **shared.data_tags({"igsm_train": paths.IGSM_TRAIN})}
    import hashlib

    source_sha256 = hashlib.sha256(source.read_bytes()).hexdigest()
    tags["vld.source.sha256"] = source_sha256
    work = shared.work_dir("retrofit", variant.name, {
        "variant": variant.to_dict(), "train": train_cfg.to_dict(),
        "source": source_sha256, "data": shared.data_sha256(paths.IGSM_TRAIN)})

    with tracking.tracked(pipeline, "retrofit", variant.name, variant.flat_params(), tags) as run:
        from vld.atomic import atomic_dir, write_json
        from vld.retrofit.api import MODEL_DIR, METRICS_FILE, retrofit_and_finetune

        metrics = retrofit_and_finetune(info, schedule, variant.method, variant.lora_rank,
                                        str(paths.IGSM_TRAIN), train_cfg, work, patterns=pipeline.patterns,
                                        logger=run.lightning_logger(), backend=train_cfg.backend,
                                        objective=variant.objective)
        if not rank0:
            return 0
        pipeline.check_unchanged(variant)
        with atomic_dir(out) as tmp:
            write_json(tmp / "variant.json", {"variant": variant.to_dict(), "sha256": variant.fingerprint()})
            shutil.copytree(work / MODEL_DIR, tmp / MODEL_DIR)
            shutil.copy2(work / METRICS_FILE, tmp / METRICS_FILE)
        run.log_metrics({key: value for key, value in metrics.items() if key != "loss_curve"})
        run.add_artifact(out / METRICS_FILE)
        run.add_artifact(out / MODEL_DIR / "retrofit.json")
        run.finish()
    shared.drop_work_dir(work)
    return 0


if __name__ == "__main__":
    run_cli(main)
