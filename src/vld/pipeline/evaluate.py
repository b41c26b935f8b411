"""Stage `evaluate_<family>@<variant>`: evaluate one trained variant (vld.eval.variant).

    python -m vld.pipeline.evaluate --family reasoning --variant cycle_x1

What is measured is the family's task (vld.pipeline.families): iGSM answer accuracy on every
test set named in `<family>.eval.tests` (greedy decoding through the KV cache, judged), the
knowledge measures on the variant's dataset, or k-hop error per hop count; always parameters
and FLOPs per token. Settings come from the family's `eval` block. Writes
one result per seed,
results/eval/<family>/<variant>/seed<s>.json (the report's input), each with its tracking record
results/records/evaluate_<family>@<variant>/seed<s>.json.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from vld.errors import fail, run_cli
from vld.host_speed import host_gflops
from vld.machine import RUN_SETTINGS
from vld.pipeline import paths, shared, tracking
from vld.pipeline.families import FAMILIES
from vld.pipeline.params import load_pipeline


def _evaluate_seed(pipeline, variant, family, device: str, run) -> dict:
    """One seed's result (vld.eval.variant's schema), its model checked against the variant."""
    where, data = family.model_dir(variant), family.eval_data(variant)
    trained_as = where / "variant.json"
    if not trained_as.is_file() or json.loads(trained_as.read_text()).get("sha256") != variant.fingerprint():
        fail(str(where), f"was trained with other settings than {variant.key} in {pipeline.path} says now; run its"
             " training stage first (dvc repro)")
    metrics_file = where / "metrics.json"
    trained = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    meta = {"variant": variant.name, "pattern": variant.pattern, "k": variant.k, "layers": variant.layers,
            "seed": variant.seed, "train_tokens_per_s": trained.get("train_tokens_per_s"),
            "train_host_gflops": host_gflops(trained),
            "train_steps": trained.get("steps"), "train_tokens": trained.get("tokens_seen"),
            "model_name": variant.model_name, "variant_sha256": variant.fingerprint()}
    meta.update({key: getattr(variant, key) for key in ("source", "method", "data", "objective")
                 if getattr(variant, key) is not None})
    if variant.recipe is not None:
        meta["recipe"] = variant.recipe_fields()
    if trained.get("learning_curve"):
        meta["learning_curve"] = trained["learning_curve"]
    if trained.get("machine"):  # what trained it, for the report's list of machines
        meta["trained_on"] = {**trained["machine"], **{key: trained[key] for key in RUN_SETTINGS
                                                       if trained.get(key) is not None}}  # compile only when on
    from vld.eval.variant import evaluate_variant, result_metrics
    from vld.train.config import apply_threads

    model = family.load_model(variant)
    model.to(device).eval()
    apply_threads(variant.train)  # the CPU thread count the variant was trained with
    test_time = variant.test_time_schedules() if variant.eval.get("test_time_depth") else None
    result = evaluate_variant(model, variant.family, data, family.eval_settings(variant), meta, test_time)
    run.log_metrics(shared.numeric_leaves(result_metrics(result)))
    return result


def _headline(result: dict) -> tuple[str, float | None]:
    """The number a stage's closing line shows: k-hop error (mean over hop counts), the first
    test's answer accuracy, or the absorbed bits."""
    if result.get("khop"):
        errors = [hop["error"] for hop in result["khop"]["hops"].values()]
        return "mean k-hop error", sum(errors) / len(errors) if errors else None
    if result.get("igsm"):
        test, measures = next(iter(result["igsm"].items()))
        return f"{test} answer accuracy", measures.get("answer_accuracy")
    knowledge = result.get("knowledge") or {}
    return "absorbed bits", knowledge.get("absorbed_bits_ce")


def main(argv: list[str] | None = None) -> int:
    args = shared.parser("evaluate", __doc__.splitlines()[0], tuple(FAMILIES)).parse_args(argv)
    pipeline = load_pipeline(args.params)
    variant = pipeline.variant(args.family, args.variant)
    family = FAMILIES[variant.family]
    seeds = variant.per_seed()
    device = shared.stage_device(variant.train)  # evaluate where the training ran
    for seeded in seeds:
        if not family.model_dir(seeded).is_dir():
            fail(str(family.model_dir(seeded)), "not found: run the training stage of this variant first (dvc repro)")
    out = paths.eval_dir(variant.family, variant.name)
    from vld.atomic import atomic_dir, check_replaceable, write_json

    check_replaceable(out)
    data = family.eval_data(variant)
    dirs = {**data.get("igsm_test", {}), **{key: data[key] for key in ("knowledge", "khop_test") if key in data}}

    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(tracking.tracked(
            pipeline, f"evaluate_{variant.family}", paths.seed_key(variant.name, seeded.seed),
            {**seeded.flat_params(), **{f"eval.{k}": v for k, v in seeded.eval.items()}},
            {**seeded.tags(), **shared.data_tags(dirs), "vld.variant": variant.name})) for seeded in seeds]
        # a retrofit family's training stage bears its name (vld.pipeline.retrofit)
        trainer = variant.family if family.trained_by == "retrofit" else f"pretrain_{variant.family}"
        for seeded, run in zip(seeds, runs):
            run.log_datasets([tracking.dataset_entry(Path(path).name, path, "test") for path in dirs.values()])
            run.evaluate_model(tracking.record_path(trainer, paths.seed_key(variant.name, seeded.seed)))
        results = [_evaluate_seed(pipeline, seeded, family, device, run) for seeded, run in zip(seeds, runs)]
        for seeded in seeds:
            pipeline.check_unchanged(seeded)
        with atomic_dir(out) as tmp:
            for seeded, result in zip(seeds, results):
                write_json(tmp / paths.eval_file(variant.family, variant.name, seeded.seed).name, result)
        for seeded, run in zip(seeds, runs):
            run.add_artifact(paths.eval_file(variant.family, variant.name, seeded.seed))
            run.finish()
    headline = [_headline(result) for result in results]
    shared.summary(f"evaluate_{variant.family}@{variant.name}", out, len(seeds), headline[0][0] if headline else None,
                   [value for _, value in headline])
    return 0


if __name__ == "__main__":
    run_cli(main)
