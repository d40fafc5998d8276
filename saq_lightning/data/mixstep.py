"""Mixstep schedule: which (student steps, orders, teacher steps) phase trains at each batch.

Pure logic, no Lightning: :meth:`MixStepSchedule.phase_at` maps a global batch index to a phase
index, so the data pipeline (which prefetches) and the callback (which logs) agree without
talking to each other, and a resumed run continues the same sequence.

Two modes:

* ``cycle``: every epoch cycles the phases, each for ``batches_per_phase`` consecutive batches
  (0 0 1 1 2 2 0 0 ... with 2 batches per phase), restarting at phase 0 when an epoch starts.
* ``progressive``: phase ``p`` for the ``p``-th block of ``batches_per_phase`` batches (or of
  ``epochs_per_phase`` epochs), then the last phase forever.

``phase_batches="steps"`` makes a phase's block proportional to its student step count (the
author's development code weights phases 100:50:20:10 by step count): phase ``p`` gets
``round(batches_per_phase * steps_p / min_q steps_q)`` batches (at least 1), e.g. 10, 5, 2, 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .errors import PhaseError

MODES = ("cycle", "progressive")
PHASE_BATCHES = ("equal", "steps")


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

    ``student_solver`` names the solver family the student will be sampled with (``dpm``,
    ``dpm++``, ``dpm_multistep``, ``dpm++_multistep``, ``plms``; default: the teacher's): the
    loss takes the student's own ``student_order`` step of that solver (solver-aware alignment).
    Orders are 1..3, and 4 for PLMS (which solver allows which order is checked by the run).
    """

    student_steps: int
    student_order: int = 1
    teacher_order: int = 2
    teacher_steps: int | None = None
    student_solver: str | None = None

    def __post_init__(self) -> None:
        _positive_int("student_steps", self.student_steps)
        for name in ("student_order", "teacher_order"):
            order = getattr(self, name)
            if order not in (1, 2, 3, 4):
                raise ValueError(f"{name} must be 1, 2, 3 (or 4 for PLMS), got {order!r}")
        if self.teacher_order < self.student_order:
            raise ValueError(f"teacher_order {self.teacher_order} is below student_order "
                             f"{self.student_order}: the teacher must be at least as accurate")
        if self.teacher_steps is None:
            object.__setattr__(self, "teacher_steps", self.student_steps)
        _positive_int("teacher_steps", self.teacher_steps)
        if self.student_solver is not None and not isinstance(self.student_solver, str):
            raise ValueError(f"student_solver must be a solver family name or None, got "
                             f"{self.student_solver!r}")
        if self.teacher_steps % self.student_steps:
            raise ValueError(f"teacher_steps {self.teacher_steps} is not a multiple of "
                             f"student_steps {self.student_steps}: the grids do not nest")

    @property
    def teacher_nfe(self) -> int:
        """Teacher network evaluations of a singlestep solver over the whole grid."""
        return int(self.teacher_steps) * self.teacher_order


@dataclass(frozen=True)
class MixStepSchedule:
    """Phases and how batches walk through them; see the module docstring for the modes."""

    phases: tuple[MixStepPhase, ...]
    mode: Literal["cycle", "progressive"] = "cycle"
    batches_per_phase: int = 1
    epochs_per_phase: int | None = None
    phase_batches: Literal["equal", "steps"] = "equal"

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
        if self.phase_batches not in PHASE_BATCHES:
            raise ValueError(f"phase_batches must be one of {PHASE_BATCHES}, got {self.phase_batches!r}")
        if self.phase_batches == "steps" and self.epochs_per_phase is not None:
            raise ValueError("phase_batches='steps' sizes blocks of batches; it does not apply "
                             "with epochs_per_phase")

    def batches_of(self, phase: int) -> int:
        """Consecutive batches of phase ``phase`` in one block."""
        if self.phase_batches == "equal":
            return self.batches_per_phase
        least = min(p.student_steps for p in self.phases)
        return max(1, round(self.batches_per_phase * self.phases[phase].student_steps / least))

    def _block_of(self, i: int) -> int:
        ends, total = [], 0
        for p in range(self.num_phases):
            total += self.batches_of(p)
            ends.append(total)
        return next((p for p, e in enumerate(ends) if i < e), self.num_phases - 1)

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
            if self.phase_batches == "steps":
                return self._block_of(i % sum(self.batches_of(p) for p in range(self.num_phases)))
            return (i // self.batches_per_phase) % self.num_phases
        if self.epochs_per_phase is not None:
            if not batches_per_epoch:
                raise ValueError("epochs_per_phase needs batches_per_epoch to locate a batch")
            block = self.epochs_per_phase * batches_per_epoch
        elif self.phase_batches == "steps":
            return self._block_of(batch_index)
        else:
            block = self.batches_per_phase
        return min(batch_index // block, self.num_phases - 1)

    def phase(self, batch_index: int, batches_per_epoch: int | None = None) -> MixStepPhase:
        return self.phases[self.phase_at(batch_index, batches_per_epoch)]

    def check_buckets(self, n_buckets: int) -> None:
        """Raise if a phase has more student steps than ``n_buckets`` timestep buckets.

        Necessary, not sufficient: which grids share buckets depends on their spacing, which the
        student's bucket map (:mod:`saq_lightning.quant.bucket_map`) checks when it is built.
        """
        _positive_int("n_buckets", n_buckets)
        bad = [(i, p.student_steps) for i, p in enumerate(self.phases) if p.student_steps > n_buckets]
        if bad:
            listed = ", ".join(f"phase {i} (student_steps={n})" for i, n in bad)
            raise PhaseError(f"{listed}: more steps than the {n_buckets} activation-quantizer "
                             f"timestep buckets; distinct steps need distinct buckets")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["phases"] = [asdict(p) for p in self.phases]
        if d["phase_batches"] == "equal":  # as written before the option existed (resume checks)
            del d["phase_batches"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MixStepSchedule:
        return cls(**{**d, "phases": tuple(MixStepPhase(**p) for p in d["phases"])})
