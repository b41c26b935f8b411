"""Stage `pretrain_<family>@<variant>`: train one variant of a pretrained family from scratch.

    python -m vld.pipeline.pretrain --family reasoning --variant cycle_x1

Reads the variant, its model, the family's train block and the hardware block of params.yaml;
trains on the family's data (vld.pipeline.families: data/igsm/train, data/knowledge/<data>, or
the k-hop stream); writes results/pretrain/<family>/<variant>/ {model.pt, metrics.json,
config.json} and the tracking record results/records/pretrain_<family>@<variant>.json. A killed
run resumes from its last checkpoint (under .vld-work/) when the stage runs again with the same
settings.
"""

from __future__ import annotations

from vld.errors import fail, run_cli
from vld.pipeline import paths, shared, tracking
from vld.pipeline.families import FAMILIES, trained_by
from vld.pipeline.params import load_pipeline
from vld.train.config import check_devices


def main(argv: list[str] | None = None) -> int:
    args = shared.parser("pretrain", __doc__.splitlines()[0], trained_by("pretrain")).parse_args(argv)
    pipeline = load_pipeline(args.params)  # the whole file, before anything else
    variant = pipeline.variant(args.family, args.variant)
    family = FAMILIES[variant.family]
    train_cfg = variant.train
    check_devices(train_cfg, "hardware")  # a GPU asked for and missing: fail now, before any run
    data_dir = family.train_data(variant)
    out = paths.pretrain_dir(variant.family, variant.name)
    rank0 = tracking.is_global_zero()

    from vld.atomic import check_replaceable

    if rank0:
        check_replaceable(out)
    if data_dir is None:  # a stream: its settings are the data
        from dataclasses import asdict

        model_cfg = variant.model
        data_id = {"stream": variant.data, "spec": asdict(pipeline.data[variant.family][variant.data])}
        tags = variant.tags()
    else:
        from vld.data.tokens import TokenSet

        tokens = TokenSet.open(data_dir)
        model_cfg = variant.model_config(tokens.vocab_size)
        if len(tokens.tokens) < train_cfg.seq_len + 1:
            fail(f"{variant.key}.train.seq_len", f"{train_cfg.seq_len} is longer than the data ({len(tokens.tokens)} tokens)")
        data_id = {"data": shared.data_sha256(data_dir), "dataset": str(data_dir)}
        tags = {**variant.tags(), **shared.data_tags({data_dir.name if variant.family == "knowledge"
                                                      else "igsm_train": data_dir})}
    if variant.objective is not None:
        data_id["objective"] = variant.objective
    stage = f"pretrain_{variant.family}"
    work = shared.work_dir(stage, variant.name, {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), **data_id})

    datamodule = family.datamodule(variant, pipeline)  # a sample that does not fit fails here, before the run

    with tracking.tracked(pipeline, stage, variant.name, variant.flat_params(), tags) as run:
        import torch

        from vld.atomic import atomic_dir, write_json
        from vld.model import VLDTransformer, save_model
        from vld.train.run import run_training

        torch.manual_seed(variant.seed)  # the initial weights depend on the seed only
        model = VLDTransformer(model_cfg, backend=train_cfg.backend)
        metrics = run_training(model, datamodule, train_cfg, work, logger=run.lightning_logger())
        if not rank0:
            return 0
        pipeline.check_unchanged(variant)
        with atomic_dir(out) as tmp:
            save_model(model, tmp / "model.pt")
            write_json(tmp / "variant.json", {"variant": variant.to_dict(), "sha256": variant.fingerprint()})
            write_json(tmp / "metrics.json", metrics)
            write_json(tmp / "config.json", {"variant": variant.to_dict(), "model": model_cfg.to_dict(),
                                             "train": train_cfg.to_dict(), **data_id})
        run.log_metrics({key: value for key, value in metrics.items() if key != "loss_curve"})
        run.log_params({"params": model.parameter_count(), "effective_depth": model.effective_depth})
        run.add_artifact(out / "metrics.json")
        run.add_artifact(out / "config.json")
        run.finish()
    shared.drop_work_dir(work)
    return 0


if __name__ == "__main__":
    run_cli(main)
