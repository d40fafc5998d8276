"""A progress bar that counts optimizer steps out of ``max_steps``.

Lightning's bar counts batches of the current epoch against the epoch length: with
``max_epochs: -1`` it shows ``Epoch 0/-2``, after a resume ``60/19`` (the epoch restarted in the
middle), and the logger version as a metric (``v_num: 1.000``). A training run here is defined by
``max_steps``, so the bar shows ``step 60/300`` and the logged metrics, nothing else.

``SAQLightningModule.configure_callbacks`` swaps it in for Lightning's default bar only (keeping
its refresh rate, e.g. a slower one set for batch logs); a disabled bar stays disabled.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """``train: step N/max_steps`` instead of batches per epoch."""

    def _total(self, trainer: pl.Trainer) -> int | None:
        total = trainer.max_steps
        if total is None or total < 0:
            estimated = trainer.estimated_stepping_batches
            return int(estimated) if math.isfinite(estimated) else None
        return int(total)

    def on_train_epoch_start(self, trainer: pl.Trainer, *_) -> None:
        bar = self.train_progress_bar
        bar.reset(total=self._total(trainer))
        bar.initial = 0
        bar.n = trainer.global_step
        bar.set_description("train")
        bar.refresh()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step % max(1, self.refresh_rate) == 0 or step == self._total(trainer):
            bar = self.train_progress_bar
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        bar = self.train_progress_bar
        bar.n = trainer.global_step
        bar.set_postfix(self.get_metrics(trainer, pl_module))
        bar.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class RichStepProgressBar(RichProgressBar):
    """The same for Lightning's rich bar (its default when ``rich`` is installed)."""

    @property
    def total_train_batches(self) -> int | float:
        total = self.trainer.max_steps
        return int(total) if total is not None and total >= 0 else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        return "train (steps)"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def step_progress_bar_for(trainer: pl.Trainer) -> TQDMProgressBar | RichProgressBar | None:
    """The replacement for the trainer's bar when it is one of Lightning's default ones (else
    ``None``), with its refresh rate."""
    current = getattr(trainer, "progress_bar_callback", None)
    if type(current) is TQDMProgressBar:
        return StepProgressBar(refresh_rate=current.refresh_rate, process_position=current.process_position,
                               leave=getattr(current, "_leave", False))
    if type(current) is RichProgressBar:
        return RichStepProgressBar(refresh_rate=current.refresh_rate, leave=getattr(current, "_leave", False),
                                   theme=current.theme)
    return None
