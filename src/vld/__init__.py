"""vld: virtual logical depth, reproducible.

Packages, one job each:
  vld.model     the transformer and its reuse schedules (plain nn.Module)
  vld.data      dataset generation (iGSM, random tokens, biographies) and the on-disk token store
  vld.train     Lightning module, data modules and the Trainer built from config
  vld.eval      iGSM accuracy, knowledge capacity, compute, per-layer depth use
  vld.retrofit  applying a schedule to trained models (own checkpoints, Hugging Face Llama), export
  vld.report    the paper's tables and figures
  vld.pipeline  the DVC stage entry points and MLflow tracking
"""

__version__ = "0.1.0"
