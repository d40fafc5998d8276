"""The student's bucket map from its run: the grids ``(spacing, steps)`` of the mixstep phases.

:func:`student_grids` turns phases into the evaluated model timesteps of each student grid (the
sampler's own :func:`~saq_lightning.sampling.time_grid`, so training, calibration and sampling
see the same points); :func:`bucket_map_for` builds and checks the
:class:`~saq_lightning.quant.bucket_map.BucketMap` (a :class:`BucketCollisionError` names the
phase, the spacing and the colliding steps).
"""

from __future__ import annotations

from collections.abc import Sequence

from saq_lightning.data.mixstep import MixStepPhase
from saq_lightning.quant.bucket_map import BucketMap, StudentGrid
from saq_lightning.sampling import DiscreteSchedule, time_grid


def student_grids(schedule: DiscreteSchedule, spacing: str,
                  phases: Sequence[MixStepPhase]) -> list[StudentGrid]:
    """One :class:`StudentGrid` per phase: the points a first-order student step evaluates."""
    out = []
    for i, p in enumerate(phases):
        steps = int(p.student_steps)
        ts = schedule.model_timestep(time_grid(schedule, steps, spacing)[:-1])
        out.append(StudentGrid(f"phase {i} (student_steps={steps})", spacing, steps,
                               tuple(float(t) for t in ts.round(decimals=9))))
    return out


def bucket_map_for(schedule: DiscreteSchedule, spacing: str, phases: Sequence[MixStepPhase],
                   n_buckets: int) -> BucketMap:
    """The bucket map of a student trained on ``phases`` over ``spacing`` grids."""
    return BucketMap.from_grids(student_grids(schedule, spacing, phases), n_buckets,
                                schedule.num_train_timesteps)
