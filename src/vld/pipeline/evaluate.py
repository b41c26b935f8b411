"""Stage `evaluate_<family>@<variant>`: evaluate one trained variant (vld.eval.variant).

    python -m vld.pipeline.evaluate --family reasoning --variant cycle_x1

reasoning / retrofit: iGSM answer accuracy on every test set named in `<family>.eval.tests`
(greedy decoding through the KV cache, judged), plus parameters and FLOPs per token;
knowledge: every knowledge measure on the variant's dataset. Settings come from the family's
`eval` block. Writes results/eval/<family>/<variant>.json (the report's input) and the
record results/records/evaluate_<family>@<variant>.json.
"""

from __future__ import annotations

import json

from vld.errors import fail, run_cli
from vld.pipeline import _stage
from vld.pipeline.params import FAMILIES, load_pipeline


def _inputs(variant) -> tuple:
    """(model location, data dirs for evaluate_variant, training metrics file)."""
    if variant.family == "retrofit":
        where = _stage.retrofit_dir(variant.name)
        metrics = where / "metrics.json"
    else:
        where = _stage.pretrain_dir(variant.family, variant.name)
        metrics = where / "metrics.json"
    if variant.family == "knowledge":
        data = {"knowledge": str(_stage.knowledge_dir(variant.data))}
    else:
        data = {"igsm_test": {name: str(_stage.IGSM_TESTS / name) for name in variant.eval["tests"]},
                "igsm_train": str(_stage.IGSM_TRAIN)}
    return where, data, metrics


def main(argv: list[str] | None = None) -> int:
    args = _stage.parser("evaluate", __doc__.splitlines()[0], FAMILIES).parse_args(argv)
    pipeline = load_pipeline(args.params)
    variant = pipeline.variant(args.family, args.variant)
    where, data, metrics_file = _inputs(variant)
    device = _stage.stage_device(variant.train_config())  # evaluate where the training ran
    if not where.is_dir():
        fail(str(where), "not found: run the training stage of this variant first (dvc repro)")
    settings = {key: value for key, value in variant.eval.items() if key != "tests"}
    train_metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    meta = {"variant": variant.name, "pattern": variant.pattern, "k": variant.k, "layers": variant.layers,
            "seed": variant.seed, "train_tokens_per_s": train_metrics.get("train_tokens_per_s")}
    for key in ("label", "source", "method", "data"):
        if getattr(variant, key, None) is not None:
            meta[key] = getattr(variant, key)
    meta["model_name"] = variant.model_name
    out = _stage.eval_file(variant.family, variant.name)
    dirs = {**data.get("igsm_test", {}), **({"knowledge": data["knowledge"]} if "knowledge" in data else {})}
    tags = {"vld.pattern": variant.pattern, "vld.k": variant.k, "vld.effective_depth": variant.effective_depth,
            **_stage.data_tags(dirs)}
    params = {**variant.flat_params(), **{f"eval.{k}": v for k, v in variant.eval.items()}}

    with _stage.tracked(pipeline, f"evaluate_{variant.family}", variant.name, params, tags) as run:
        from vld.atomic import write_json
        from vld.eval.variant import evaluate_variant

        if variant.family == "retrofit":
            from vld.retrofit.api import load_retrofit

            model, _ = load_retrofit(where)
        else:
            from vld.model import load_model

            model = load_model(where / "model.pt")
        model.to(device).eval()
        result = evaluate_variant(model, variant.family, data, settings, meta)
        write_json(out, result)
        run.log_metrics(_stage.numeric_leaves({key: result.get(key) for key in (
            "params", "params_no_embed", "effective_depth", "flops_per_token", "flops_per_token_train",
            "train_tokens_per_s", "igsm", "knowledge")}))
        run.add_artifact(out)
        run.finish()
    return 0


if __name__ == "__main__":
    run_cli(main)
