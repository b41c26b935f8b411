"""Stage `pretrain_<family>@<variant>`: train every seed of one variant from scratch.

    python -m vld.pipeline.pretrain --family reasoning --variant cycle_x1

Reads the variant, its model, the family's train block and the hardware block of params.yaml;
trains on the family's data (vld.pipeline.families: data/igsm/train, data/knowledge/<data>, or
the k-hop stream). The variant's seeds train together (vld.train.stacked.train_seeds), each
with its own initialisation and data stream. Writes results/pretrain/<family>/<variant>/seed<s>/
{model.pt, metrics.json, config.json, variant.json} and one tracking record (MLflow child run)
per seed, results/records/pretrain_<family>@<variant>/seed<s>.json. A killed run resumes from
its last checkpoint (under .vld-work/) when the stage runs again with the same settings.
"""

from __future__ import annotations

import contextlib

from vld.errors import run_cli
from vld.pipeline import paths, shared, tracking
from vld.pipeline.families import FAMILIES, trained_by
from vld.pipeline.params import load_pipeline
from vld.train.config import check_devices


def main(argv: list[str] | None = None) -> int:
    args = shared.parser("pretrain", __doc__.splitlines()[0], trained_by("pretrain")).parse_args(argv)
    pipeline = load_pipeline(args.params)  # the whole file, before anything else
    variant = pipeline.variant(args.family, args.variant)
    family = FAMILIES[variant.family]
    seeds = variant.per_seed()
    check_devices(variant.train, "hardware")  # a GPU asked for and missing: fail now, before any run
    out = paths.pretrain_dir(variant.family, variant.name)
    rank0 = tracking.is_global_zero()

    from vld.atomic import check_replaceable

    if rank0:
        check_replaceable(out)
    model_cfg, data_id, token_sets = family.train_identity(variant, pipeline)
    data_tags = shared.data_tags(token_sets)
    inputs = [tracking.dataset_entry(name, path, "training") for name, path in token_sets.items()]
    if "stream" in data_id:  # a generated stream (k-hop): its settings are the data
        inputs.append(tracking.stream_entry(data_id["stream"], f"vld.data.{variant.family}", data_id["spec"], "training"))
    if variant.objective is not None:
        data_id["objective"] = variant.objective
    stage = f"pretrain_{variant.family}"
    loops = {"loops": variant.loops.to_dict()} if variant.loops is not None else {}
    work = shared.work_dir(stage, variant.name, {"model": model_cfg.to_dict(), "train": variant.train.to_dict(),
                                                 "seeds": list(variant.seeds), **data_id, **loops})
    # a sample that does not fit fails here, before the run
    datamodules = [family.datamodule(seeded, pipeline) for seeded in seeds]

    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(tracking.tracked(
            pipeline, stage, paths.seed_key(variant.name, seeded.seed), seeded.flat_params(),
            {**seeded.tags(), **data_tags, "vld.variant": variant.name})) for seeded in seeds]
        for run in runs:
            run.log_datasets(inputs)
        import torch

        from vld.atomic import atomic_dir, write_json
        from vld.model import VLDTransformer, save_model
        from vld.train.run import TimeEstimate
        from vld.train.stacked import train_seeds

        models = []
        for seeded in seeds:
            torch.manual_seed(seeded.seed)  # the initial weights depend on the seed only
            models.append(VLDTransformer(model_cfg, backend=seeded.train.backend))
        # one seed: Lightning logs its curve live; several: each seed's curve is logged below
        logger = runs[0].lightning_logger() if len(seeds) == 1 else None
        curve_score = family.curve_score(variant, pipeline) if variant.train.curve_every else None
        per_seed = train_seeds(models, datamodules, [seeded.train for seeded in seeds], work, logger=logger,
                               loops=variant.loops, curve_score=curve_score,
                               callbacks=[TimeEstimate(f"{stage}@{variant.name}", len(seeds))])
        if not rank0:
            return 0
        for seeded in seeds:
            pipeline.check_unchanged(seeded)
        with atomic_dir(out) as tmp:
            for seeded, model, metrics in zip(seeds, models, per_seed):
                where = tmp / paths.seed_name(seeded.seed)
                where.mkdir()
                save_model(model, where / "model.pt")
                write_json(where / "variant.json", {"variant": seeded.to_dict(), "sha256": seeded.fingerprint()})
                write_json(where / "metrics.json", metrics)
                write_json(where / "config.json", {"variant": seeded.to_dict(), "model": model_cfg.to_dict(),
                                                   "train": seeded.train.to_dict(), **data_id})
        for seeded, model, metrics, run in zip(seeds, models, per_seed, runs):
            if logger is None:
                run.log_curve("train/loss", metrics["loss_curve"], seeded.train.log_every)
            curve = metrics.get("learning_curve") or {}
            for key, values in curve.items():
                if key != "steps":
                    run.log_points(f"curve/{key}", curve["steps"], values)
            run.log_metrics({key: value for key, value in metrics.items() if key not in ("loss_curve", "learning_curve")})
            run.log_params({"params": model.parameter_count(), "effective_depth": model.effective_depth})
            run.log_model(tracking.model_entry(
                f"{variant.family}-{variant.name}-seed{seeded.seed}", family.model_dir(seeded) / "model.pt",
                "vld.model.load_model", seeded.flat_params(), metrics))
            run.add_artifact(family.model_dir(seeded) / "metrics.json")
            run.add_artifact(family.model_dir(seeded) / "config.json")
            run.finish()
    shared.drop_work_dir(work)
    shared.summary(f"{stage}@{variant.name}", out, len(seeds), "final loss", [m.get("final_loss") for m in per_seed])
    return 0


if __name__ == "__main__":
    run_cli(main)
