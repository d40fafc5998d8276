"""``DigitsFDCallback``: a periodic quality figure for the embedded digits default.

Every ``every_n_train_steps`` (and at the end of training) the student samples ``num_samples``
class-balanced digits with the sampler it is trained for (its first mixstep phase: student solver,
order and steps, the run's spacing and guidance scale), and the FD against all 1,797 real digits in
the digits classifier's feature space and the class accuracy are logged as ``val/digits_fd`` and
``val/digits_accuracy``. Rank 0 only; the same noises every time, so the curve shows the student
changing, not the sample.

YAML::

    - class_path: saq_lightning.callbacks.digits_fd.DigitsFDCallback
      init_args: {every_n_train_steps: 100, num_samples: 500}
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from saq_lightning.data.digits import digits_split
from saq_lightning.metrics.digits_classifier import load_digits_classifier
from saq_lightning.metrics.digits_eval import evaluate_digits_model
from saq_lightning.metrics.sample_generation import SamplerSetting
from saq_lightning.students.trained_sampler import sampler_for


class DigitsFDCallback(pl.Callback):
    """Log the student's digits FD and class accuracy every ``every_n_train_steps``."""

    def __init__(self, every_n_train_steps: int = 100, num_samples: int = 500, seed: int = 0) -> None:
        if every_n_train_steps < 1:
            raise ValueError(f"every_n_train_steps must be >= 1, got {every_n_train_steps}")
        if num_samples < 10:
            raise ValueError(f"num_samples must be >= 10 (one per class at least), got {num_samples}")
        self.every_n_train_steps, self.num_samples, self.seed = every_n_train_steps, num_samples, seed
        self._classifier = None
        self._reference = None
        self._last_step = -1

    def trained_setting(self, pl_module) -> SamplerSetting:
        """The sampler the student is aligned to: the first phase's student solver (default: the
        run's family) at its student order and steps (DPM-Solver-1 at 10 steps without phases)."""
        phases = pl_module.phases or []
        settings = pl_module.teacher_settings
        if phases:
            first = phases[0]
            family = getattr(first, "student_solver", None) or settings.solver
            solver, order = sampler_for(family, int(first.student_order))
            steps = int(first.student_steps)
        else:
            solver, order, steps = "dpm1", None, 10
        return SamplerSetting(solver=solver, steps=steps, order=order, spacing=settings.spacing,
                              guidance_scale=settings.guidance_scale)

    @torch.no_grad()
    def measure(self, pl_module) -> dict[str, float]:
        device = pl_module.device
        if self._classifier is None:
            self._classifier, _ = load_digits_classifier(device=device)
            self._reference, _ = digits_split("all")
        student = pl_module.student_model
        was_training = pl_module.student.training
        pl_module.student.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                quality = evaluate_digits_model(student, self._classifier, self.trained_setting(pl_module),
                                                n=self.num_samples, seed=self.seed, reference=self._reference)
        finally:
            pl_module.student.train(was_training)
        return {"val/digits_fd": quality.fd, "val/digits_accuracy": quality.class_accuracy}

    def _log(self, trainer: pl.Trainer, pl_module) -> None:
        step = trainer.global_step
        if step == self._last_step:
            return
        self._last_step = step
        if trainer.is_global_zero:
            metrics = self.measure(pl_module)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from saq_lightning.callbacks.graceful_stop import stopping_for_restart

        if stopping_for_restart(trainer):  # a requeue comes first; no scalars at the stop step
            return
        if trainer.global_step % self.every_n_train_steps == 0:
            self._log(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        from saq_lightning.callbacks.graceful_stop import stopping_for_restart

        if stopping_for_restart(trainer):  # a requeue comes first; no scalars at the stop step
            return
        self._log(trainer, pl_module)
