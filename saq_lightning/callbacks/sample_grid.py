"""``SampleGridCallback``: every N optimizer steps, log teacher vs student samples as one image.

Top row: the FP teacher with its order-k solver on the active mixstep phase's teacher grid.
Bottom row: the quantized student with the student order on the phase's student grid (the
"dual acceleration" setting), from the same initial noises and conditions. Logged to TensorBoard
as ``samples/teacher_top_student_bottom`` (also at the start of training: the calibrated, not yet
aligned student). Rank zero only.

YAML::

    trainer:
      callbacks:
        - class_path: saq_lightning.callbacks.sample_grid.SampleGridCallback
          init_args: {every_n_steps: 500, num_samples: 8}
"""

from __future__ import annotations

import logging
import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor

from saq_lightning.metrics.grids import labelled_grid

log = logging.getLogger(__name__)

TAG = "samples/teacher_top_student_bottom"


def image_grid(rows: list[Tensor], pad: int = 1) -> Tensor:
    """Rows of ``[N, C, H, W]`` images in ``[-1, 1]`` -> one ``[3, H', W']`` image in ``[0, 1]``."""
    if not rows:
        raise ValueError("image_grid needs at least one row")
    n, _, h, w = rows[0].shape
    out = torch.ones(3, len(rows) * (h + pad) + pad, n * (w + pad) + pad)
    for r, images in enumerate(rows):
        x = ((images.detach().float().cpu().clamp(-1, 1) + 1) / 2)
        x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
        for i in range(min(n, x.shape[0])):
            top, left = pad + r * (h + pad), pad + i * (w + pad)
            out[:, top:top + h, left:left + w] = x[i]
    return out


def grid_labels(pl_module: pl.LightningModule, n: int) -> tuple[list[str], list[str] | None]:
    """Row labels (model, solver order, steps of the active phase) and column labels (class)."""
    phase = pl_module.active_phase[1] if getattr(pl_module, "active_phase", None) else None
    if phase is None and getattr(pl_module, "phases", None):
        phase = pl_module.phases[0]
    if phase is not None:
        rows = [f"teacher DPM-{phase.teacher_order} @{phase.teacher_steps}",
                f"student DPM-{phase.student_order} @{phase.student_steps}"]
    else:
        rows = ["teacher", "student"]
    cols = None
    try:
        cond = pl_module.conditions(range(n), device="cpu")
    except Exception:  # noqa: BLE001 - labels are a convenience; text or unconditional: none
        cond = None
    if isinstance(cond, Tensor) and not cond.is_floating_point() and cond.ndim == 1:
        cols = [str(int(v)) for v in cond.tolist()]
    return rows, cols


class SampleGridCallback(Callback):
    """Log a teacher-vs-student sample grid every ``every_n_steps`` optimizer steps.

    Args:
        every_n_steps: interval in optimizer steps (and once at the start of training).
        num_samples: images per row.
        seed: seed of the initial noises (the same images at every log, for comparison).
        upscale: nearest-neighbour factor for tiny images (8x8 digits are hard to see); ``None``:
            enough to make rows at least 64 pixels high.
    """

    def __init__(self, every_n_steps: int = 500, num_samples: int = 8, seed: int = 0,
                 upscale: int | None = None) -> None:
        super().__init__()
        if every_n_steps < 1 or num_samples < 1:
            raise ValueError("every_n_steps and num_samples must be >= 1")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.seed = seed
        self.upscale = upscale
        self.last_logged_step: int | None = None

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not hasattr(pl_module, "sample_comparison"):
            return
        experiment = getattr(trainer.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        teacher, student = pl_module.sample_comparison(self.num_samples, self.seed)
        factor = self.upscale or max(1, math.ceil(64 / teacher.shape[-2]))
        rows, cols = grid_labels(pl_module, self.num_samples)
        grid = labelled_grid(torch.cat([teacher, student]), nrow=teacher.shape[0], scale=factor,
                             row_labels=rows, col_labels=cols,
                             title=f"step {trainer.global_step}: teacher (top) vs student (bottom)")
        experiment.add_image(TAG, grid, global_step=trainer.global_step, dataformats="HWC")
        self.last_logged_step = int(trainer.global_step)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs,
                           batch, batch_idx: int) -> None:
        if trainer.global_step % self.every_n_steps == 0 and trainer.global_step != self.last_logged_step:
            self._log(trainer, pl_module)
