"""``TrajectoryDeviationCallback``: during training, how far the student's sampling trajectories
are from the FP teacher's at solver orders 1/2/3 and how straight its flow is
(``saq_lightning.metrics.trajectory_diagnostics``), logged every ``every_n_train_steps``.

YAML (LightningCLI)::

    trainer:
      callbacks:
        - class_path: saq_lightning.callbacks.trajectory_deviation.TrajectoryDeviationCallback
          init_args: {every_n_train_steps: 500, num_samples: 16, steps: 10, aligned_solver: dpm2}

The module must expose the two models, either as a method ``diffusion_models() -> (teacher,
student)`` returning ``DiffusionModel``s, or as attributes ``teacher`` (a ``DiffusionModel``) and
``student`` (a ``DiffusionModel``, or the student noise network, which is then plugged into the
teacher with ``teacher.with_unet``). Runs on global rank 0 only, with the same ``x_T`` every time,
and logs ``<prefix>/order{k}/...`` scalars to every logger, plus the plot as an image to
TensorBoard loggers.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from saq_lightning.seeding import evaluation_labels, evaluation_noise

from ..metrics.sample_generation import (
    condition_classes,
    guided_predictor,
    model_dtype,
)
from ..metrics.trajectory_diagnostics import (
    TrajectoryDiagnostics,
    save_diagnostics_plot,
    trajectory_diagnostics,
)
from ..models.diffusion_model import DiffusionModel
from ..sampling import time_grid


def models_of(pl_module: nn.Module) -> tuple[DiffusionModel, DiffusionModel]:
    """``(teacher, student)`` of a training module (see the module docstring)."""
    if hasattr(pl_module, "diffusion_models"):
        teacher, student = pl_module.diffusion_models()
    else:
        teacher, student = getattr(pl_module, "teacher", None), getattr(pl_module, "student", None)
    if not isinstance(teacher, DiffusionModel) or student is None:
        raise AttributeError(
            f"{type(pl_module).__name__} exposes no teacher/student for TrajectoryDeviationCallback: define "
            "diffusion_models() -> (teacher, student) or attributes `teacher` (DiffusionModel) and `student`"
        )
    if not isinstance(student, DiffusionModel):
        student = teacher.with_unet(student)
    return teacher, student


class TrajectoryDeviationCallback(Callback):
    """Log trajectory diagnostics of the student every ``every_n_train_steps`` optimizer steps.

    Args:
        every_n_train_steps: how often (global steps); also at the end of training.
        num_samples: trajectories (class-balanced labels for class-conditional models).
        steps: solver steps of the grid.
        spacing: grid spacing.
        solver: solver family run at every order in ``orders``.
        orders: student/FP solver orders.
        aligned_solver / aligned_order: the teacher solver the student is aligned to.
        guidance_scale: CFG scale (default: the teacher's sampling default, else 1).
        seed: seed of ``x_T`` (the same every time).
        prefix: metric name prefix.
        log_plot: also log the PNG plot to TensorBoard loggers.
    """

    def __init__(
        self,
        every_n_train_steps: int = 500,
        num_samples: int = 16,
        steps: int = 10,
        spacing: str = "time_uniform",
        solver: str = "dpm3",
        orders: Sequence[int] = (1, 2, 3),
        aligned_solver: str = "dpm2",
        aligned_order: int | None = None,
        guidance_scale: float | None = None,
        seed: int = 0,
        prefix: str = "trajectory",
        log_plot: bool = True,
    ) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        self.every_n_train_steps = every_n_train_steps
        self.num_samples, self.steps, self.spacing = num_samples, steps, spacing
        self.solver, self.orders = solver, tuple(int(k) for k in orders)
        self.aligned_solver, self.aligned_order = aligned_solver, aligned_order
        self.guidance_scale, self.seed, self.prefix, self.log_plot = guidance_scale, seed, prefix, log_plot
        self._last_step = -1
        self._skip: str | None = None

    # -- hooks ------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._skip = self.unmatched_student(pl_module)
        if self._skip and trainer.is_global_zero:
            print(f"TrajectoryDeviationCallback: skipped: {self._skip}")

    def unmatched_student(self, pl_module: nn.Module) -> str | None:
        """Why this callback's solver says nothing about the module's student (``None``: it does).

        Its orders 1/2/3 of ``solver`` against ``aligned_solver`` describe a student sampled with
        ``solver``'s family; a student trained for another family (a PLMS or a multistep student)
        is sampled with that, so the figures would describe a sampler nobody uses."""
        from ..students.trained_sampler import sampler_for

        phases = getattr(pl_module, "phases", None) or []
        settings = getattr(pl_module, "teacher_settings", None)
        for phase in phases:
            family = getattr(phase, "student_solver", None) or getattr(settings, "solver", None)
            if family is None:
                continue
            names = {sampler_for(family, k)[0] for k in ((1, 2, 3, 4) if family == "plms" else (1, 2, 3))}
            if self.solver not in names:
                return (f"the student is trained for {family} order {phase.student_order}, and this "
                        f"callback compares {self.solver} orders {list(self.orders)} against "
                        f"{self.aligned_solver}; set its solver (and aligned_solver) to the student's "
                        f"family ({sorted(names)}) or remove it")
        return None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        from saq_lightning.callbacks.graceful_stop import stopping_for_restart

        if stopping_for_restart(trainer):  # a requeue comes first; no scalars at the stop step
            return
        step = trainer.global_step
        if self._skip:
            return
        if step > 0 and step % self.every_n_train_steps == 0 and step != self._last_step:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from saq_lightning.callbacks.graceful_stop import stopping_for_restart

        if stopping_for_restart(trainer):  # a requeue comes first; no scalars at the stop step
            return
        if not self._skip and trainer.global_step != self._last_step:
            self.run(trainer, pl_module)

    # -- work -------------------------------------------------------------------------------------
    def diagnose(self, pl_module: nn.Module) -> TrajectoryDiagnostics:
        """The diagnostics of the module's current student (no logging)."""
        teacher, student = models_of(pl_module)
        device = next(teacher.parameters()).device
        schedule = teacher.noise_schedule()
        scale = self.guidance_scale
        if scale is None:
            scale = float(teacher.sampling_defaults.get("guidance_scale", 1.0)) if teacher.conditioner else 1.0
        idx = range(self.num_samples)
        classes = condition_classes(teacher)
        cond = teacher.prepare_cond(evaluation_labels(idx, classes).to(device)) if classes is not None else None
        x_T = evaluation_noise(self.seed, idx, teacher.sample_shape).to(device, model_dtype(teacher))
        was_training = student.training
        student.eval()
        try:
            with torch.no_grad():
                return trajectory_diagnostics(
                    guided_predictor(teacher, scale, schedule), guided_predictor(student, scale, schedule), x_T,
                    time_grid(schedule, self.steps, self.spacing), schedule, cond=cond, solver=self.solver,
                    orders=self.orders, aligned_solver=self.aligned_solver, aligned_order=self.aligned_order,
                )
        finally:
            student.train(was_training)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> TrajectoryDiagnostics | None:
        self._last_step = trainer.global_step
        if not trainer.is_global_zero:
            return None
        diag = self.diagnose(pl_module)
        metrics = {f"{self.prefix}/{k}": v for k, v in diag.summary().items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if self.log_plot and hasattr(getattr(logger, "experiment", None), "add_image"):
                logger.experiment.add_image(f"{self.prefix}/plot", _plot_array(diag), trainer.global_step,
                                            dataformats="HWC")
        return diag

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = int(state_dict.get("last_step", -1))


def _plot_array(diag: TrajectoryDiagnostics):
    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    save_diagnostics_plot(diag, buf)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))
