"""Stage `<family>@<variant>` of a retrofit family: give a trained model a reuse schedule, fine-tune it.

    python -m vld.pipeline.retrofit --family retrofit --variant cycle_x1

The family (vld.pipeline.families: `retrofit` for iGSM reasoning models, `khop_retrofit` for
k-hop ones) says what its variants start from: `<family>.variants.<variant>.source` names a
variant of its source family, and seed s fine-tunes that variant's seed s
(results/pretrain/<source family>/<source>/seed<s>/model.pt). The fine-tuning data is the
source's own: data/igsm/train with the source's objective, or the source's k-hop stream from
the step where its training stopped. A variant with `schedule: {pattern: base}` is the paper's
"Base" row: the untouched model fine-tuned with the same budget. Writes
results/<family>/<variant>/seed<s>/ {model/, metrics.json, variant.json} and one record per seed,
results/records/<family>@<variant>/seed<s>.json (vld.retrofit.api does the work).
"""

from __future__ import annotations

import contextlib
import shutil

from vld.errors import run_cli
from vld.pipeline import paths, shared, tracking
from vld.pipeline.families import FAMILIES, trained_by
from vld.pipeline.params import load_pipeline
from vld.train.config import check_devices


def main(argv: list[str] | None = None) -> int:
    args = shared.parser("retrofit", __doc__.splitlines()[0], trained_by("retrofit")).parse_args(argv)
    pipeline = load_pipeline(args.params)
    variant = pipeline.variant(args.family, args.variant)
    family = FAMILIES[variant.family]
    stage = variant.family  # a retrofit family's training stage bears its name
    check_devices(variant.train, "hardware")  # a GPU asked for and missing: fail now, before any run
    out = paths.retrofit_dir(variant.family, variant.name)
    rank0 = tracking.is_global_zero()

    from vld.atomic import check_replaceable

    if rank0:
        check_replaceable(out)
    from vld.retrofit.sources import inspect_source

    import hashlib

    seeds, sources = variant.per_seed(), []
    for seeded in seeds:  # every source checked before any compute
        source = family.source_model(seeded)
        info = inspect_source(source, f"{variant.key}.source")
        sources.append((info, hashlib.sha256(source.read_bytes()).hexdigest()))
    _, data_id, token_sets = family.train_identity(variant, pipeline)
    data_tags = shared.data_tags(token_sets)
    inputs = [tracking.dataset_entry(name, path, "training") for name, path in token_sets.items()]
    if "stream" in data_id:  # a generated stream (k-hop): its settings are the data
        inputs.append(tracking.stream_entry(data_id["stream"], f"vld.data.{family.task}", data_id["spec"], "training"))
    # a sample that does not fit fails here, before the run
    datamodules = [family.datamodule(seeded, pipeline) for seeded in seeds]

    from vld.atomic import atomic_dir
    from vld.retrofit.api import finetune_retrofit
    from vld.train.run import TimeEstimate

    works = []
    # the other ranks of a multi-process run only train
    with (atomic_dir(out) if rank0 else contextlib.nullcontext()) as tmp, contextlib.ExitStack() as stack:
        runs = []
        # one after another: each its own fine-tuning
        for seeded, (info, source_sha256), datamodule in zip(seeds, sources, datamodules):
            work = shared.work_dir(stage, variant.name, {
                "variant": seeded.to_dict(), "train": seeded.train.to_dict(), "source": source_sha256, **data_id})
            run = stack.enter_context(tracking.tracked(
                pipeline, stage, paths.seed_key(variant.name, seeded.seed), seeded.flat_params(),
                {**seeded.tags(), **data_tags, "vld.source.sha256": source_sha256, "vld.variant": variant.name}))
            run.log_datasets(inputs)
            metrics = finetune_retrofit(info, seeded.schedule_spec, seeded.method, seeded.lora_rank, datamodule,
                                        seeded.train, work, patterns=pipeline.patterns, logger=run.lightning_logger(),
                                        backend=seeded.train.backend,
                                        callbacks=[TimeEstimate(f"{stage}@{variant.name} seed {seeded.seed}")])
            if not rank0:
                continue
            keep_seed(pipeline, seeded, work, tmp, run, metrics)
            runs.append(run)
            works.append(work)
        if not rank0:
            return 0
    finish_seeds(stage, variant, family, seeds, runs, works, out)
    return 0


def keep_seed(pipeline, seeded, work, tmp, run, metrics: dict) -> None:
    """One fine-tuned seed's outputs from its work dir into the stage's atomic output `tmp`
    (variant.json, model/, metrics.json), its metrics into its MLflow run."""
    from vld.atomic import write_json
    from vld.retrofit.api import METRICS_FILE, MODEL_DIR

    pipeline.check_unchanged(seeded)
    where = tmp / paths.seed_name(seeded.seed)
    where.mkdir()
    write_json(where / "variant.json", {"variant": seeded.to_dict(), "sha256": seeded.fingerprint()})
    shutil.copytree(work / MODEL_DIR, where / MODEL_DIR)
    shutil.copy2(work / METRICS_FILE, where / METRICS_FILE)
    run.log_metrics({key: value for key, value in metrics.items() if key != "loss_curve"})


def finish_seeds(stage: str, variant, family, seeds, runs, works, out) -> None:
    """Once the outputs are in place: each seed's logged model and artifacts, its run ended, the
    work dirs dropped, the stage's summary line."""
    from vld.retrofit.api import METRICS_FILE, MODEL_DIR

    for seeded, run in zip(seeds, runs):
        where = family.model_dir(seeded)
        run.log_model(tracking.model_entry(f"{stage}-{variant.name}-seed{seeded.seed}", where,
                                           "vld.retrofit.api.load_retrofit", seeded.flat_params(), run.metrics))
        run.add_artifact(where / METRICS_FILE)
        run.add_artifact(where / MODEL_DIR / "retrofit.json")
        run.finish()
    for work in works:
        shared.drop_work_dir(work)
    shared.summary(f"{stage}@{variant.name}", out, len(seeds), "final loss",
                   [run.metrics.get("final_loss") for run in runs])


if __name__ == "__main__":
    run_cli(main)
