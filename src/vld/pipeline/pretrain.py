"""Stage `pretrain_<family>@<variant>`: train one reasoning or knowledge variant from scratch.

    python -m vld.pipeline.pretrain --family reasoning --variant cycle_x1

Reads the variant, its model, the family's train block and the hardware block of params.yaml;
trains on data/igsm/train (reasoning) or data/knowledge/<data> (knowledge); writes
results/pretrain/<family>/<variant>/ {model.pt, metrics.json, config.json} and the tracking
record results/records/pretrain_<family>@<variant>.json. A killed run resumes from its last
checkpoint (under .vld-work/) when the stage runs again with the same settings.
"""

from __future__ import annotations


from vld.errors import fail, run_cli
from vld.pipeline import _stage
from vld.pipeline.params import load_pipeline
from vld.train.config import check_devices

FAMILIES = ("reasoning", "knowledge")


def data_dir_of(pipeline, variant):
    if variant.family == "reasoning":
        return _stage.IGSM_TRAIN
    return _stage.knowledge_dir(variant.data)


def main(argv: list[str] | None = None) -> int:
    args = _stage.parser("pretrain", __doc__.splitlines()[0], FAMILIES).parse_args(argv)
    pipeline = load_pipeline(args.params)  # the whole file, before anything else
    variant = pipeline.variant(args.family, args.variant)
    train_cfg = variant.train_config()
    check_devices(train_cfg, "hardware")  # a GPU asked for and missing: fail now, before any run
    data_dir = data_dir_of(pipeline, variant)
    out = _stage.pretrain_dir(variant.family, variant.name)
    rank0 = _stage.is_global_zero()

    from vld.atomic import check_replaceable
    from vld.data.tokens import TokenSet

    if rank0:
        check_replaceable(out)
    tokens = TokenSet.open(data_dir)
    model_cfg = variant.model_config(tokens.vocab_size)
    if len(tokens.tokens) < train_cfg.seq_len + 1:
        fail(f"{variant.key}.train.seq_len", f"{train_cfg.seq_len} is longer than the data ({len(tokens.tokens)} tokens)")
    data_hash = _stage.data_sha256(data_dir)
    stage = f"pretrain_{variant.family}"
    tags = {"vld.pattern": variant.pattern, "vld.k": variant.k, "vld.effective_depth": variant.effective_depth,
            "vld.model": variant.model_name, **_stage.data_tags({data_dir.name if variant.family == "knowledge"
                                                                else "igsm_train": data_dir})}
    work = _stage.work_dir(stage, variant.name, {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(),
                                                 "data": data_hash, "dataset": str(data_dir)})

    with _stage.tracked(pipeline, stage, variant.name, variant.flat_params(), tags) as run:
        import torch

        from vld.atomic import atomic_dir, write_json
        from vld.model import VLDTransformer, save_model
        from vld.train.run import run_training

        torch.manual_seed(variant.seed)  # the initial weights depend on the seed only
        model = VLDTransformer(model_cfg)
        datamodule = _datamodule(pipeline, variant, train_cfg, data_dir)
        metrics = run_training(model, datamodule, train_cfg, work, logger=run.lightning_logger())
        if not rank0:
            return 0
        with atomic_dir(out) as tmp:
            save_model(model, tmp / "model.pt")
            write_json(tmp / "metrics.json", metrics)
            write_json(tmp / "config.json", {"variant": variant.to_dict(), "model": model_cfg.to_dict(),
                                             "train": train_cfg.to_dict(), "data": str(data_dir),
                                             "data_sha256": data_hash})
        run.log_metrics({key: value for key, value in metrics.items() if key != "loss_curve"})
        run.log_params({"params": model.parameter_count(), "effective_depth": model.effective_depth})
        run.add_artifact(out / "metrics.json")
        run.add_artifact(out / "config.json")
        run.finish()
    _stage.drop_work_dir(work)
    return 0


def _datamodule(pipeline, variant, train_cfg, data_dir):
    if variant.family == "knowledge" and pipeline.knowledge_data[variant.data]["kind"] == "biographies":
        from vld.train.datamodules import BiographyDataModule

        mode = pipeline.knowledge_data[variant.data].get("mode", "fixed")
        return BiographyDataModule(data_dir, train_cfg.seq_len, train_cfg.micro_batch_size, seed=train_cfg.seed,
                                   mode=mode, num_workers=train_cfg.num_workers)
    from vld.train.datamodules import TokenWindowDataModule

    return TokenWindowDataModule(data_dir, train_cfg.seq_len, train_cfg.micro_batch_size, seed=train_cfg.seed,
                                 num_workers=train_cfg.num_workers)


if __name__ == "__main__":
    run_cli(main)
