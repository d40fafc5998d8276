"""The student's bucket map from its run: the grids ``(spacing, steps)`` of the mixstep phases.

:func:`student_grids` turns phases into the evaluated model timesteps of each student grid (the
sampler's own :func:`~saq_lightning.sampling.time_grid`, so training, calibration and sampling
see the same points) and, where asked, the intermediate points of a singlestep solver of order
2 or 3 on those steps (placed by the spacing rule, as DPM-Solver and the SA-PTQ pairs place them);
:func:`bucket_map_for` builds and checks the :class:`~saq_lightning.quant.bucket_map.BucketMap`
(a :class:`BucketCollisionError` names the phase, the spacing and the colliding steps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from saq_lightning.data.mixstep import MixStepPhase
from saq_lightning.quant.bucket_map import BucketCollisionError, BucketMap, StudentGrid
from saq_lightning.sampling import DiscreteSchedule, DPMSolver, Solver, time_grid
from saq_lightning.sampling.grids import spacing_points

#: fractions of a step at which a singlestep solver of each order evaluates (by the spacing rule)
_FRACTIONS = {2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}


def intermediate_timesteps(schedule: DiscreteSchedule, spacing: str, steps: int, order: int) -> tuple[float, ...]:
    """Model timesteps of the intermediate points of a singlestep order-``order`` solver on the
    ``steps``-step grid (``()`` for order 1; a step ending at ``t = 0`` is divided as DPM-Solver
    divides it, towards ``s / 2``)."""
    if order < 2:
        return ()
    if order not in _FRACTIONS:
        raise ValueError(f"intermediate points exist for singlestep orders 2 and 3, got {order}")
    grid = time_grid(schedule, steps, spacing)
    s, t = grid[:-1], grid[1:]
    t = torch.where(t > 0, t, s * 0.5)
    inner = spacing_points(schedule, s, t, spacing, _FRACTIONS[order]).flatten()
    return tuple(float(v) for v in schedule.model_timestep(inner).round(decimals=9))


def student_grids(schedule: DiscreteSchedule, spacing: str, phases: Sequence[MixStepPhase],
                  intermediate: Sequence[int] | None = None) -> list[StudentGrid]:
    """One :class:`StudentGrid` per phase: the points a first-order student step evaluates, plus
    the intermediate points of a singlestep solver of order ``intermediate[i]`` on phase ``i``'s
    steps (``None`` or 0/1: none)."""
    out = []
    for i, p in enumerate(phases):
        steps = int(p.student_steps)
        ts = schedule.model_timestep(time_grid(schedule, steps, spacing)[:-1])
        order = int(intermediate[i]) if intermediate is not None else 0
        out.append(StudentGrid(f"phase {i} (student_steps={steps})", spacing, steps,
                               tuple(float(t) for t in ts.round(decimals=9)),
                               intermediate_timesteps(schedule, spacing, steps, order)))
    return out


def bucket_map_for(schedule: DiscreteSchedule, spacing: str, phases: Sequence[MixStepPhase],
                   n_buckets: int, intermediate: Sequence[int] | None = None) -> BucketMap:
    """The bucket map of a student trained on ``phases`` over ``spacing`` grids (``intermediate``:
    see :func:`student_grids`)."""
    return BucketMap.from_grids(student_grids(schedule, spacing, phases, intermediate), n_buckets,
                                schedule.num_train_timesteps)


def solver_aware_orders(phases: Sequence[MixStepPhase], student_solvers: Sequence[Solver]) -> list[int]:
    """Per phase, the order whose intermediate points the student itself evaluates in training:
    ``student_order`` for a singlestep (DPM-Solver) student of order >= 2, else 0."""
    return [int(p.student_order) if int(p.student_order) >= 2 and isinstance(solver, DPMSolver) else 0
            for p, solver in zip(phases, student_solvers, strict=True)]


def bucket_map_with_intermediates(schedule: DiscreteSchedule, spacing: str, phases: Sequence[MixStepPhase],
                                  n_buckets: int, intermediate: Sequence[int]) -> tuple[BucketMap, str | None]:
    """:func:`bucket_map_for` with the ``intermediate`` points; when ``n_buckets`` leaves too few
    buckets for them, the map without them (intermediate points then use their nearest grid
    point's bucket) and the one line saying so. A grid that collides by itself still raises."""
    if not any(int(k) >= 2 for k in intermediate):
        return bucket_map_for(schedule, spacing, phases, n_buckets), None
    try:
        return bucket_map_for(schedule, spacing, phases, n_buckets, intermediate), None
    except BucketCollisionError as err:
        plain = bucket_map_for(schedule, spacing, phases, n_buckets)
        return plain, (f"the intermediate points share their nearest grid point's activation bucket: "
                       f"{str(err).split(': ', 1)[1]}")
