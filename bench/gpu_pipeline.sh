#!/usr/bin/env bash
# Run params.yaml's whole DAG stage by stage, in dvc.yaml's order, on a machine without dvc or
# mlflow (a lent GPU box, say): what `dvc repro` would run, minus caching and tracking.
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
from vld.pipeline.params import load_pipeline

p = load_pipeline()
print("data_igsm --split train")
print("data_igsm --split tests")
for name in p.knowledge_data:
    print(f"data_knowledge --dataset {name}")
for family in ("reasoning", "knowledge"):
    for name in p.variants.get(family, {}):
        print(f"pretrain --family {family} --variant {name}")
for name in p.variants.get("retrofit", {}):
    print(f"retrofit --variant {name}")
for family in ("reasoning", "knowledge", "retrofit"):
    for name in p.variants.get(family, {}):
        print(f"evaluate --family {family} --variant {name}")
print("report")
PY
) || exit 1
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
