"""Stage `report`: the paper's tables and figures from every evaluation result.

    python -m vld.pipeline.report

Thin: the report is `vld.report.build.build_report(results/eval, results/report, profile)`.
This stage also completes the MLflow view of the pipeline: every stage record under
results/records/ whose stage did not run under the current parent run (DVC restored it from
its cache) is re-attached as a child run tagged vld.restored=true (vld.pipeline.tracking).
"""

from __future__ import annotations

import json

from vld.errors import fail, run_cli
from vld.pipeline import _stage, paths
from vld.pipeline.params import load_pipeline


def main(argv: list[str] | None = None) -> int:
    args = _stage.parser("report", __doc__.splitlines()[0], variant=False).parse_args(argv)
    pipeline = load_pipeline(args.params)
    if not paths.EVAL.is_dir():
        fail(str(paths.EVAL), "no evaluation results: run the evaluation stages first (dvc repro)")
    from vld.atomic import check_replaceable

    check_replaceable(paths.REPORT)
    with _stage.tracked(pipeline, "report", None, {"profile": pipeline.profile}, {}) as run:
        from vld.pipeline import tracking
        from vld.report.build import build_report

        build_report(paths.EVAL, paths.REPORT, pipeline.profile)
        summary = paths.REPORT / "metrics.json"
        if summary.is_file():
            run.log_metrics(_stage.numeric_leaves(json.loads(summary.read_text())))
        run.add_artifact(paths.REPORT)
        restored = tracking.reattach_records(run, tracking.read_records())
        run.set_tags({"vld.restored_stages": len(restored)})
        if restored:
            print(f"vld: re-attached {len(restored)} cached stage record(s) to the MLflow parent run: "
                  + ", ".join(restored))
        run.finish(record_file=paths.REPORT / "tracking.json")
        tracking.finish_pipeline(run, pipeline)
    return 0


if __name__ == "__main__":
    run_cli(main)
