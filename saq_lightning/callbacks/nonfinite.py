"""``NonFiniteGuard``: skip steps with a NaN/Inf loss or gradient, count them, stop after too many.

The policy, in order:

* the LightningModule sets ``pl_module.skipped_nonfinite_batch`` when its loss is not finite on
  some rank (decided jointly, so every DDP rank skips together) and returns a zero loss that
  does not touch the non-finite graph (DDP does not allow ``training_step`` to return ``None``);
* before the optimizer step, the gradients of such a step, and any gradients that are not finite
  (checked after the DDP all-reduce), are dropped: the optimizer leaves the weights and its
  moments unchanged (the LR schedule still advances by one step);
* every skipped step is counted (``train/skipped_nonfinite`` is logged); when the count exceeds
  ``max_skipped`` training stops with :class:`NonFiniteLossError`. Skipped steps never change the
  weights, so every checkpoint written so far (``last.ckpt`` included) is a good one.

The count is kept in checkpoints. ``SAQLightningModule`` installs this guard itself
(``max_nonfinite_steps``).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from saq_lightning.errors import UserError

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """Training stopped after too many non-finite losses or gradients."""


class NonFiniteGuard(Callback):
    """See the module docstring. ``max_skipped = 0`` stops at the first non-finite step."""

    def __init__(self, max_skipped: int = 10) -> None:
        super().__init__()
        if max_skipped < 0:
            raise ValueError(f"max_skipped must be >= 0, got {max_skipped}")
        self.max_skipped = int(max_skipped)
        self.skipped = 0
        self.skipped_steps: list[int] = []
        self._grads_dropped = False

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._grads_dropped = False

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        if not grads:
            return
        if not getattr(pl_module, "skipped_nonfinite_batch", False):
            if bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):  # one sync
                return
            log.warning("step %d: non-finite gradients, skipping the optimizer step",
                        trainer.global_step)
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self._grads_dropped = not getattr(pl_module, "skipped_nonfinite_batch", False)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        skipped = bool(getattr(pl_module, "skipped_nonfinite_batch", False)) or self._grads_dropped
        if skipped:  # the step counter has already moved on: this batch was step global_step - 1
            self.skipped += 1
            self.skipped_steps.append(int(trainer.global_step) - 1)
        pl_module.log("train/skipped_nonfinite", float(self.skipped), on_step=True, on_epoch=False)
        if self.skipped > self.max_skipped:
            last = _last_checkpoint(trainer)
            where = (f"the last good checkpoint is {last}" if last else
                     "no checkpoint was written before")
            raise NonFiniteLossError(
                f"stopped after {trainer.global_step} optimizer steps: {self.skipped} steps had a "
                f"non-finite (NaN/Inf) loss or gradient (limit max_nonfinite_steps="
                f"{self.max_skipped}; skipped steps {self.skipped_steps[-10:]}); {where}. "
                f"Lower the learning rates, check the data, or use precision 32-true.")

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "skipped_steps": list(self.skipped_steps)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped = int(state_dict.get("skipped", 0))
        self.skipped_steps = [int(s) for s in state_dict.get("skipped_steps", [])]


def _last_checkpoint(trainer: pl.Trainer) -> str | None:
    for cb in trainer.checkpoint_callbacks:
        path = getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "")
        if path:
            return str(path)
    return None
