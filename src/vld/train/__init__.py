"""Training: a LightningModule around any plain model, DataModules, and a resumable Trainer run.

Import the submodules (`vld.train.config` is light; `module`, `datamodules`, `run` import
torch and lightning).
"""
