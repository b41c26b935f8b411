"""Third-party messages a training stage should not print, each filtered where it is raised.

Only what carries no information for a vld user: an advertisement and a deprecation inside a
library's own code that a user cannot act on. Installed once per process (idempotent).
"""

from __future__ import annotations

import logging
import warnings

_installed = False


class _Drop(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_third_party() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    # lightning 2.6.6 (trainer/connectors/logger_connector) logs "💡 Tip: ... litlogger" through
    # rank_zero_info whenever the trainer's loggers include no LitLogger
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_Drop("litlogger"))
    # lightning 2.6.6 (trainer/connectors/checkpoint_connector) logs this at every checkpoint saved
    # without the argument; the full checkpoint (optimizer and loop state) is what a resume needs
    logging.getLogger("lightning.pytorch.trainer.connectors.checkpoint_connector").addFilter(
        _Drop("`weights_only` was not set"))
    # torch 2.13 deprecated its pytree LeafSpec; lightning 2.6.6's utilities/_pytree.py still builds one
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
