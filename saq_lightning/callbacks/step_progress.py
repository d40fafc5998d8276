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
import sys
import time
from typing import Any

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


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class ProgressLines(pl.Callback):
    """One plain line every ``interval_s`` seconds (and at the last step) on rank 0, for logs that are
    not a terminal (a SLURM job log, ``make demo > file``)::

        train step 120/300 | loss 0.0123 | 2.31 steps/s | ETA 0:01:18

    A progress bar off a terminal prints nothing until it refreshes, and then a carriage-return
    line; this is what a person tailing the log needs. The rate counts the steps of this start only
    (a resumed run does not count the restored steps as done in no time)."""

    def __init__(self, interval_s: float = 30.0, stream: Any = None) -> None:
        self.interval_s = float(interval_s)
        self.stream = stream
        self._start: tuple[float, int] | None = None
        self._last_line = 0.0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = time.monotonic()
        self._start, self._last_line = (now, trainer.global_step), now

    def line(self, trainer: pl.Trainer, now: float) -> str:
        step, total = trainer.global_step, trainer.max_steps
        started, first = self._start if self._start is not None else (now, step)
        rate = (step - first) / max(now - started, 1e-9)
        parts = [f"train step {step}/{total}" if total and total > 0 else f"train step {step}"]
        loss = trainer.callback_metrics.get("train/loss")
        if loss is not None:
            parts.append(f"loss {float(loss):.4g}")
        parts.append(f"{rate:.3g} steps/s")
        if total and total > 0 and rate > 0:
            parts.append(f"ETA {_clock((total - step) / rate)}")
        return " | ".join(parts)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        last = trainer.max_steps is not None and trainer.global_step >= trainer.max_steps > 0
        if not trainer.is_global_zero or (now - self._last_line < self.interval_s and not last):
            return
        self._last_line = now
        print(self.line(trainer, now), file=self.stream if self.stream is not None else sys.stdout, flush=True)
