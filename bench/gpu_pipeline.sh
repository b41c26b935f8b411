#!/usr/bin/env bash
# Run params.yaml's whole DAG stage by stage, in dvc.yaml's order, on a machine without dvc or
# mlflow (a lent GPU box, say): what `dvc repro` would run, minus caching and tracking.
# VLD_LIST_STAGES=1 only prints the stage commands.
#   python -m vld.pipeline.profile gpu-smoke && bash bench/gpu_pipeline.sh [OUT_DIR]
# Needs torch, lightning, numpy, pyyaml, omegaconf and matplotlib. Prints each stage's exit
# status and wall time, the tail of any failing stage's log, and packs results/ into
# OUT_DIR/results.tgz. Exits non-zero if a stage failed.
set -u
PY=${PY:-python3}
OUT_DIR=${1:-results_gpu}
mkdir -p "$OUT_DIR"
export VLD_TRACKING=0 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
stages=$($PY - <<'PY'
# dvc.yaml's stages in its order (which is a valid run order), each foreach expanded over its
# params.yaml mapping: the same commands `dvc repro` runs, read from the same file.
from pathlib import Path

import yaml

from vld.pipeline.params import load_pipeline

load_pipeline()  # bad params: one line, before any stage
params = yaml.safe_load(Path("params.yaml").read_text())
PREFIX = "python -m vld.pipeline."
for name, stage in yaml.safe_load(Path("dvc.yaml").read_text())["stages"].items():
    if "foreach" in stage:
        items = params
        for part in stage["foreach"].removeprefix("${").removesuffix("}").split("."):
            items = items.get(part) or {}
        commands = [stage["do"]["cmd"].replace("${key}", str(key)) for key in items]
    else:
        commands = [stage["cmd"]]
    for command in commands:
        if not command.startswith(PREFIX):
            raise SystemExit(f"dvc.yaml: stage {name}: {command!r} does not start with {PREFIX!r}")
        print(command.removeprefix(PREFIX))
PY
) || exit 1
if [ "${VLD_LIST_STAGES:-0}" = 1 ]; then echo "$stages"; exit 0; fi
failed=0
while read -r stage; do
  start=$(date +%s%N)
  $PY -m vld.pipeline.$stage > "$OUT_DIR/stage.log" 2>&1
  rc=$?
  echo "== $stage: rc $rc, $(( ($(date +%s%N) - start) / 1000000 )) ms"
  if [ $rc -ne 0 ]; then failed=$((failed + 1)); tail -20 "$OUT_DIR/stage.log"; fi
done <<< "$stages"
rm -f "$OUT_DIR/stage.log"
tar czf "$OUT_DIR/results.tgz" results
echo "stages failed: $failed"
[ $failed -eq 0 ]
