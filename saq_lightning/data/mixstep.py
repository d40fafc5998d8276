"""Mixstep schedule: which (student steps, orders, teacher steps) phase trains at each batch.

Pure logic, no Lightning: :meth:`MixStepSchedule.phase_at` maps a global batch index to a phase
index, so the data pipeline (which prefetches) and the callback (which logs) agree without
talking to each other, and a resumed run continues the same sequence.

Two modes:

* ``cycle``: every epoch cycles the phases, each for ``batches_per_phase`` consecutive batches
  (0 0 1 1 2 2 0 0 ... with 2 batches per phase), restarting at phase 0 when an epoch starts.
* ``progressive``: phase ``p`` for the ``p``-th block of ``batches_per_phase`` batches (or of
  ``epochs_per_phase`` epochs), then the last phase forever.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .errors import PhaseError

MODES = ("cycle", "progressive")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class MixStepPhase:
    """One phase: a student grid of ``student_steps`` steps aligned to a teacher.

    ``teacher_steps`` is the number of steps of the teacher's grid (default: ``student_steps``,
    the same grid; a 2nd-order teacher then spends twice the evaluations). It must be a multiple
    of ``student_steps`` so that every student step ``s -> t`` is a union of teacher steps.
    """

    student_steps: int
    student_order: int = 1
    teacher_order: int = 2
    teacher_steps: int | None = None

    def __post_init__(self) -> None:
        _positive_int("student_steps", self.student_steps)
        for name in ("student_order", "teacher_order"):
            order = getattr(self, name)
            if order not in (1, 2, 3):
                raise ValueError(f"{name} must be 1, 2 or 3, got {order!r}")
        if self.teacher_order < self.student_order:
            raise ValueError(f"teacher_order {self.teacher_order} is below student_order "
                             f"{self.student_order}: the teacher must be at least as accurate")
        if self.teacher_steps is None:
            object.__setattr__(self, "teacher_steps", self.student_steps)
        _positive_int("teacher_steps", self.teacher_steps)
        if self.teacher_steps % self.student_steps:
            raise ValueError(f"teacher_steps {self.teacher_steps} is not a multiple of "
                             f"student_steps {self.student_steps}: the grids do not nest")

    @property
    def teacher_nfe(self) -> int:
        """Teacher network evaluations of a singlestep solver over the whole grid."""
        return int(self.teacher_steps) * self.teacher_order


def servable_step_counts(n_buckets: int) -> list[int]:
    """Step counts whose grid the activation quantizers' ``n_buckets`` timestep buckets serve.

    A grid of ``N`` steps is served when ``N`` divides ``n_buckets``: step ``i`` then maps to
    bucket ``i * n_buckets / N``, and the per-bucket step sizes are shared across phases.
    """
    _positive_int("n_buckets", n_buckets)
    return [n for n in range(1, n_buckets + 1) if n_buckets % n == 0]


@dataclass(frozen=True)
class MixStepSchedule:
    """Phases and how batches walk through them; see the module docstring for the modes."""

    phases: tuple[MixStepPhase, ...]
    mode: Literal["cycle", "progressive"] = "cycle"
    batches_per_phase: int = 1
    epochs_per_phase: int | None = None

    def __post_init__(self) -> None:
        phases = tuple(p if isinstance(p, MixStepPhase) else MixStepPhase(**dict(p))
                       for p in self.phases)
        if not phases:
            raise ValueError("a mixstep schedule needs at least one phase")
        object.__setattr__(self, "phases", phases)
        if self.mode not in MODES:
            raise ValueError(f"mixstep mode must be one of {MODES}, got {self.mode!r}")
        _positive_int("batches_per_phase", self.batches_per_phase)
        if self.epochs_per_phase is not None:
            _positive_int("epochs_per_phase", self.epochs_per_phase)
            if self.mode != "progressive":
                raise ValueError("epochs_per_phase only applies to mode='progressive'")

    @classmethod
    def from_steps(
        cls,
        student_steps: Sequence[int],
        student_order: int = 1,
        teacher_order: int = 2,
        **kwargs: Any,
    ) -> MixStepSchedule:
        """E.g. ``from_steps([100, 50, 20, 10])``: 1st-order student vs 2nd-order teacher."""
        phases = tuple(MixStepPhase(n, student_order, teacher_order) for n in student_steps)
        return cls(phases=phases, **kwargs)

    @property
    def num_phases(self) -> int:
        return len(self.phases)

    def phase_at(self, batch_index: int, batches_per_epoch: int | None = None) -> int:
        """Phase index of the batch with global index ``batch_index`` (0-based, across epochs).

        ``batches_per_epoch`` is needed by ``cycle`` (to restart each epoch) and by
        ``epochs_per_phase``; without it ``cycle`` runs on through epoch boundaries.
        """
        if batch_index < 0:
            raise ValueError(f"batch_index must be >= 0, got {batch_index}")
        if self.mode == "cycle":
            i = batch_index % batches_per_epoch if batches_per_epoch else batch_index
            return (i // self.batches_per_phase) % self.num_phases
        if self.epochs_per_phase is not None:
            if not batches_per_epoch:
                raise ValueError("epochs_per_phase needs batches_per_epoch to locate a batch")
            block = self.epochs_per_phase * batches_per_epoch
        else:
            block = self.batches_per_phase
        return min(batch_index // block, self.num_phases - 1)

    def phase(self, batch_index: int, batches_per_epoch: int | None = None) -> MixStepPhase:
        return self.phases[self.phase_at(batch_index, batches_per_epoch)]

    def check_buckets(self, n_buckets: int) -> None:
        """Raise if a phase's student grid cannot be served by ``n_buckets`` timestep buckets."""
        servable = servable_step_counts(n_buckets)
        bad = [(i, p.student_steps) for i, p in enumerate(self.phases)
               if p.student_steps not in servable]
        if bad:
            listed = ", ".join(f"phase {i} (student_steps={n})" for i, n in bad)
            raise PhaseError(f"{listed}: not servable by {n_buckets} activation-quantizer timestep "
                             f"buckets; a grid of N steps needs N to divide {n_buckets} "
                             f"(servable: {servable})")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["phases"] = [asdict(p) for p in self.phases]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MixStepSchedule:
        return cls(**{**d, "phases": tuple(MixStepPhase(**p) for p in d["phases"])})
