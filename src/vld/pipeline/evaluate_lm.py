"""Stage `evaluate_lm_retrofit@<variant>`: lm-evaluation-harness on each seed of a fine-tuned
lm_retrofit variant, through vld's model class (vld.eval.lm_harness: the schedule, the
per-visit KV cache).

    python -m vld.pipeline.evaluate_lm --variant cycle

Tasks, shots, limit and generation settings: the family's eval block (vld.eval.lm_tasks);
offline (local task YAMLs and the local datasets cache). Writes
results/eval/lm_retrofit/<variant>/seed<s>.json: each task's metrics with lm-eval's standard
errors, and one record per seed (MLflow metrics lm_eval.<task>.<metric>).
"""

from __future__ import annotations

import contextlib
import json

from vld.errors import fail, run_cli
from vld.pipeline import paths, shared, tracking
from vld.pipeline.families import FAMILIES
from vld.pipeline.params import load_pipeline

FAMILY = "lm_retrofit"


def evaluate_seed(variant, device: str) -> dict:
    """One seed's result: the variant, what it was trained with, and lm-eval's scores."""
    from vld.eval.lm_harness import VldLM, run_tasks
    from vld.train.config import apply_threads

    where = FAMILIES[FAMILY].model_dir(variant)
    trained_as = where / "variant.json"
    if not trained_as.is_file() or json.loads(trained_as.read_text()).get("sha256") != variant.fingerprint():
        fail(str(where), f"was trained with other settings than {variant.key} says now; run its training stage"
             " first (dvc repro)")
    trained = json.loads((where / "metrics.json").read_text())
    apply_threads(variant.train)
    settings = variant.eval
    lm = VldLM(path=str(where), batch_size=settings["batch_size"], device=device)
    scores = run_tasks(lm, settings)
    return {"schema": "vld.lm_eval/1", "variant": variant.name, "family": FAMILY, "pattern": variant.pattern,
            "k": variant.k, "layers": variant.layers, "seed": variant.seed, "source": variant.source,
            "data": variant.data, "method": variant.method, "lora_rank": variant.lora_rank,
            "effective_depth": variant.effective_depth, "schedule": variant.schedule,
            "params": trained.get("params"), "train_steps": trained.get("steps"),
            "train_tokens": trained.get("tokens_seen"), "final_loss": trained.get("final_loss"),
            "variant_sha256": variant.fingerprint(), "settings": settings, **scores}


def main(argv: list[str] | None = None) -> int:
    shared.offline()
    args = shared.parser("evaluate_lm", __doc__.splitlines()[0]).parse_args(argv)
    pipeline = load_pipeline(args.params)
    variant = pipeline.variant(FAMILY, args.variant)
    seeds = variant.per_seed()
    device = shared.stage_device(variant.train)
    for seeded in seeds:
        if not FAMILIES[FAMILY].model_dir(seeded).is_dir():
            fail(str(FAMILIES[FAMILY].model_dir(seeded)), "not found: run lm_retrofit@" + variant.name + " first")
    out = paths.eval_dir(FAMILY, variant.name)
    from vld.atomic import atomic_dir, check_replaceable, write_json

    check_replaceable(out)
    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(tracking.tracked(
            pipeline, f"evaluate_{FAMILY}", paths.seed_key(variant.name, seeded.seed),
            {**seeded.flat_params(), **{f"eval.{k}": v for k, v in seeded.eval.items()}},
            {**seeded.tags(), "vld.variant": variant.name})) for seeded in seeds]
        results = []
        for seeded, run in zip(seeds, runs):
            run.evaluate_model(tracking.record_path(FAMILY, paths.seed_key(variant.name, seeded.seed)))
            result = evaluate_seed(seeded, device)
            run.log_metrics({f"lm_eval.{task}.{metric}": value for task, measures in result["tasks"].items()
                             for metric, value in measures.items()})
            results.append(result)
        for seeded in seeds:
            pipeline.check_unchanged(seeded)
        with atomic_dir(out) as tmp:
            for seeded, result in zip(seeds, results):
                write_json(tmp / paths.eval_file(FAMILY, variant.name, seeded.seed).name, result)
        for seeded, run in zip(seeds, runs):
            run.add_artifact(paths.eval_file(FAMILY, variant.name, seeded.seed))
            run.finish()
    first = next(iter(results[0]["tasks"].items()), None) if results else None
    shared.summary(f"evaluate_{FAMILY}@{variant.name}", out, len(seeds), first and f"{first[0]} {next(iter(first[1]), '')}",
                   [next(iter(r["tasks"][first[0]].values()), None) for r in results] if first else [])
    return 0


if __name__ == "__main__":
    run_cli(main)
