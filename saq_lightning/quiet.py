"""Known-harmless library messages, silenced at one place, each with the reason it is harmless.

Every ``fit`` printed these, and a user cannot tell them from real problems:

* Lightning's "💡 Tip: ... litlogger": an advertisement for a cloud logger.
* Lightning's "`isinstance(treespec, LeafSpec)` is deprecated": raised inside Lightning's own
  ``_pytree`` helper by the installed torch; nothing in this project calls it.
* "Your `IterableDataset` has `__len__` defined": the trajectory stream knows its epoch length and
  splits its shards per rank and per worker itself (``docs/data.md``), so ``__len__`` is exact.
* "Found N module(s) in eval mode at the start of training": the frozen FP teacher, in eval mode
  on purpose (``docs/training.md``).
* Lightning's "callbacks returned in configure_callbacks will override ... ProgressBar": the
  module swaps in the step-counting progress bar on purpose (``callbacks/step_progress.py``).
* diffusers' "Cannot initialize model with low cpu memory usage because `accelerate` was not
  found": a loading-speed hint; the weights load the same way without ``accelerate``.

Only these exact messages are filtered; every other warning still shows.
"""

from __future__ import annotations

import logging
import warnings

#: (message regex, category) of the warnings module messages filtered out
_WARNINGS = (
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", None),
    (r"Your `IterableDataset` has `__len__` defined", None),
    (r"Found \d+ module\(s\) in eval mode at the start of training", None),
)
#: (logger name, message prefix) of log records filtered out
_LOG_RECORDS = (
    ("lightning.pytorch.utilities.rank_zero", "💡 Tip:"),
    ("diffusers.models.modeling_utils", "Cannot initialize model with low cpu memory usage"),
    ("lightning.pytorch.utilities.rank_zero", "The following callbacks returned in `LightningModule.configure_callbacks` will override existing callbacks passed to Trainer: RichProgressBar"),
    ("lightning.pytorch.utilities.rank_zero", "The following callbacks returned in `LightningModule.configure_callbacks` will override existing callbacks passed to Trainer: TQDMProgressBar"),
)


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefix)


def silence_known_harmless() -> None:
    """Install the filters (idempotent)."""
    for message, category in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category or Warning)
    for name, prefix in _LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))
