"""Stage `report`: the paper's tables and figures from every evaluation result.

    python -m vld.pipeline.report

Thin: the report is `vld.report.build.build_report(results/eval, results/report, profile,
training curves)`, the curves read from each trained model's metrics.json.
This stage also completes the MLflow view of the pipeline: every stage record under
results/records/ whose stage did not run under the current parent run (DVC restored it from
its cache) is re-attached as a child run tagged vld.restored=true (vld.pipeline.tracking).
"""

from __future__ import annotations

import json

from vld.errors import fail, run_cli
from vld.pipeline import paths, shared, tracking
from vld.pipeline.params import load_pipeline


def current_results(pipeline) -> list[dict]:
    """The evaluation result of every seed of every variant params.yaml has now, each checked to
    have been computed with the variant's current settings: the report never mixes settings, nor
    shows results of variants (or seeds) since removed."""
    results = []
    for family, table in pipeline.variants.items():
        for seeded in (one for variant in table.values() for one in variant.per_seed()):
            variant, path = seeded, paths.eval_file(family, seeded.name, seeded.seed)
            if not path.is_file():
                fail(str(path), f"missing: run the evaluation of {variant.key} first (dvc repro)")
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                fail(str(path), f"unreadable variant result ({type(err).__name__}); run dvc repro")
            if not isinstance(result, dict) or result.get("variant_sha256") != variant.fingerprint():
                fail(str(path), f"was computed with other settings than {variant.key} in {pipeline.path} says"
                     " now; the report does not mix settings (run dvc repro)")
            results.append(result)
    if not results:
        fail(str(pipeline.path), "has no variants: nothing to report")
    return results


def training_curves(pipeline) -> list[dict]:
    """The pretraining loss curve (metrics.json "loss_curve") of every seed of every pretrained
    variant params.yaml has now, for the report's loss_curves.csv. Not the retrofit families': a
    profile without retrofit variants has no results/<retrofit family> for the stage to depend on."""
    from vld.pipeline.families import trained_by

    curves = []
    for family, table in pipeline.variants.items():
        if family not in trained_by("pretrain"):
            continue
        for seeded in (one for variant in table.values() for one in variant.per_seed()):
            folder = paths.pretrain_model_dir(family, seeded.name, seeded.seed)
            try:
                curve = json.loads((folder / "metrics.json").read_text())["loss_curve"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                fail(str(folder / "metrics.json"), f"no readable loss_curve ({type(err).__name__}); run dvc repro")
            curves.append({"family": family, "variant": seeded.name, "seed": seeded.seed, "loss_curve": curve})
    return curves


def main(argv: list[str] | None = None) -> int:
    args = shared.parser("report", __doc__.splitlines()[0], variant=False).parse_args(argv)
    pipeline = load_pipeline(args.params)
    results = current_results(pipeline)
    from vld.atomic import check_replaceable

    check_replaceable(paths.REPORT)
    with tracking.tracked(pipeline, "report", None, {"profile": pipeline.profile}, {}) as run:
        from vld.report.build import build_report

        build_report(results, paths.REPORT, pipeline.profile, training_curves(pipeline))
        summary = paths.REPORT / "metrics.json"
        if summary.is_file():
            run.log_metrics(shared.numeric_leaves(json.loads(summary.read_text())))
        run.add_artifact(paths.REPORT)
        restored = tracking.reattach_records(run, tracking.read_records())
        run.set_tags({"vld.restored_stages": len(restored)})
        if restored:
            print(f"vld: re-attached {len(restored)} cached stage record(s) to the MLflow parent run: "
                  + ", ".join(restored))
        run.finish(record_file=paths.REPORT / "tracking.json")
        tracking.finish_pipeline(run, pipeline)
    shared.summary("report", paths.REPORT)
    return 0


if __name__ == "__main__":
    run_cli(main)
