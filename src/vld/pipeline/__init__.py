"""The DVC stage entry points and MLflow tracking.

Every stage is `python -m vld.pipeline.<stage> [--variant NAME]`, run by `dvc repro` from the
repository root (see dvc.yaml and docs/pipeline.md). Each stage first loads and validates the
whole params.yaml (`vld.pipeline.params`), so a bad file stops the first stage that runs with one
line naming the key, before any compute; then it computes, writes its outputs atomically, and
records itself in MLflow (`vld.pipeline.tracking`).
"""
