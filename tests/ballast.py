"""A callback whose checkpoint state grows with every step (no tests here): a checkpoint saved later
in a run is then larger than an earlier one, as a run's history grows, so a full disk can refuse
the newer save while the older file fits."""

from __future__ import annotations

import lightning.pytorch as pl
import torch


class Ballast(pl.Callback):
    def __init__(self, floats_per_step: int = 1 << 16) -> None:
        self.floats_per_step = floats_per_step
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps = trainer.global_step

    def state_dict(self) -> dict:
        return {"history": torch.zeros(self.steps * self.floats_per_step)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps = len(state_dict["history"]) // self.floats_per_step
