"""A callback that slows every training step down (no tests here): a subprocess test can then send
a signal in the middle of a run, well before it would finish."""

from __future__ import annotations

import time

import lightning.pytorch as pl


class Pace(pl.Callback):
    def __init__(self, seconds: float = 0.5) -> None:
        self.seconds = seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        time.sleep(self.seconds)
