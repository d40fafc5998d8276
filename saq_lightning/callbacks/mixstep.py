"""``MixStepCallback``: owns the mixstep schedule of a run, hands it to the data module, logs the
active phase, tells the module when the phase changes, and keeps its position in checkpoints.

The phase of a batch is :meth:`MixStepSchedule.phase_at` of its global batch index. The data
module computes the same function when it assembles (and prefetches) batches, so nothing has to
be told "in time"; batches from ``TrajectoryDataModule`` carry ``batch_index`` and
``mixstep_phase``, and the callback checks that they agree with it.

YAML (LightningCLI): the top-level ``mixstep:`` block, given once; the CLI adds the callback to
the trainer and links its schedule into the module and the data module (``link_arguments``)::

    mixstep:
      phases:
        - {student_steps: 100, student_order: 1, teacher_order: 2}
        - {student_steps: 50}
        - {student_steps: 20}
        - {student_steps: 10}
      mode: cycle
      batches_per_phase: 25
      n_buckets: 100
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from saq_lightning.mismatches import diff_values, format_mismatches

from ..data.mixstep import MixStepPhase, MixStepSchedule

log = logging.getLogger(__name__)


class MixStepCallback(Callback):
    """Mixstep schedule as a Lightning callback.

    Args:
        phases: the phases, in order (e.g. student steps 100, 50, 20, 10 against a 2nd-order
            teacher).
        mode: ``cycle`` (phases cycle within every epoch, ``batches_per_phase`` batches each) or
            ``progressive`` (phase ``p`` for the ``p``-th block of ``batches_per_phase`` batches,
            or of ``epochs_per_phase`` epochs).
        n_buckets: number of per-timestep activation-quantizer buckets; every phase's student
            grid must be servable by it (checked at construction). ``None``: not checked here;
            call ``schedule.check_buckets(n)`` once the count is known.
        strict_resume: a checkpoint written under another schedule is an error (else a
            warning).
        phase_batches: ``equal`` (every phase ``batches_per_phase`` batches per block) or
            ``steps`` (proportional to the phase's student steps; the author's recipe).

    A ``LightningModule`` that defines ``on_mixstep_phase(index: int, phase: MixStepPhase)`` is
    called before the first batch of every phase change (and at the first batch of a run).
    """

    def __init__(
        self,
        phases: Sequence[MixStepPhase],
        mode: Literal["cycle", "progressive"] = "cycle",
        batches_per_phase: int = 1,
        epochs_per_phase: int | None = None,
        n_buckets: int | None = None,
        strict_resume: bool = True,
        phase_batches: Literal["equal", "steps"] = "equal",
    ) -> None:
        super().__init__()
        self.schedule = MixStepSchedule(tuple(phases), mode, batches_per_phase, epochs_per_phase,
                                        phase_batches)
        if n_buckets is not None:
            self.schedule.check_buckets(n_buckets)
        self.strict_resume = strict_resume
        self.next_batch = 0
        self.phase: int | None = None
        self.phase_batches = [0] * self.schedule.num_phases
        self._announced: int | None = None  # phase last told to the module in this process

    @classmethod
    def from_schedule(cls, schedule: MixStepSchedule, **kwargs: Any) -> MixStepCallback:
        return cls(schedule.phases, schedule.mode, schedule.batches_per_phase,
                   schedule.epochs_per_phase, phase_batches=schedule.phase_batches, **kwargs)

    @property
    def active_phase(self) -> MixStepPhase | None:
        return None if self.phase is None else self.schedule.phases[self.phase]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Hand the schedule to the module and the data module (the CLI links it into both at
        construction already; a Trainer built in Python gets it here)."""
        for owner in (pl_module, trainer.datamodule):
            if owner is not None and callable(getattr(owner, "set_mixstep", None)):
                owner.set_mixstep(self.schedule)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._announced = None

    @staticmethod
    def _batches_per_epoch(trainer: pl.Trainer) -> int | None:
        per_epoch = getattr(trainer.datamodule, "batches_per_epoch", None)
        if per_epoch is None and math.isfinite(trainer.num_training_batches):
            per_epoch = int(trainer.num_training_batches)
        return per_epoch or None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        index = self.next_batch
        if isinstance(batch, dict) and isinstance(batch.get("batch_index"), int):
            index = batch["batch_index"]
        phase = self.schedule.phase_at(index, self._batches_per_epoch(trainer))
        carried = batch.get("mixstep_phase") if isinstance(batch, dict) else None
        if carried is not None and carried != phase:
            raise RuntimeError(f"batch {index} was assembled for mixstep phase {carried} but the "
                               f"schedule says {phase}: the data module uses another schedule")
        self.phase = phase
        if phase != self._announced:
            self._announced = phase
            hook = getattr(pl_module, "on_mixstep_phase", None)
            if callable(hook):
                hook(phase, self.schedule.phases[phase])
        self.phase_batches[phase] += 1
        self.next_batch = index + 1
        spec = self.schedule.phases[phase]
        pl_module.log("mixstep/phase", float(phase), on_step=True, on_epoch=False)
        pl_module.log("mixstep/student_steps", float(spec.student_steps), on_step=True,
                      on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule.to_dict(),
            "next_batch": self.next_batch,
            "phase": self.phase,
            "phase_batches": list(self.phase_batches),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("schedule")
        if saved is not None:
            mismatches = diff_values(saved, self.schedule.to_dict(), "mixstep", subset=False)
            if mismatches:
                message = format_mismatches(
                    "the checkpoint was written under another mixstep schedule "
                    "(expected = checkpoint, found = now)", mismatches)
                if self.strict_resume:
                    raise ValueError(message + "\nSet strict_resume=False to continue anyway.")
                log.warning(message)
        self.next_batch = int(state_dict.get("next_batch", 0))
        self.phase = state_dict.get("phase")
        counts = list(state_dict.get("phase_batches", []))
        if len(counts) == self.schedule.num_phases:
            self.phase_batches = [int(c) for c in counts]
