"""The student's own solver step inside the loss (solver-aware alignment).

For a point ``x_s`` of phase ``p`` the student takes the step it will take when it is sampled:
``phases[p].student_solver`` (default: the teacher's family) at ``phases[p].student_order``,
capped as that solver's sampling loop caps step ``step`` of ``student_steps`` (multistep warm-up
and ``lower_order_final``). Its effective direction is what the loss compares with the teacher's
``eps_eff``:

* singlestep DPM-Solver(++)-k: k differentiable student evaluations, at ``x_s`` and at the
  student's *own* intermediate points (built from its own first evaluations);
* multistep DPM-Solver(++)-kM / PLMS: one evaluation at ``x_s`` plus the student's evaluations at
  the ``k - 1`` previous grid states of the teacher's trajectory (differentiable too), combined
  by the solver's formula (PLMS's first step: its pseudo improved Euler step, 2 evaluations);
* order 1 (DPM-Solver-1 = DDIM, PLMS-1): ``eps(x_s, s)`` itself -- today's MOTA, exactly (same
  loss, same gradients). ``eps(x_s, s)`` of every row is one evaluation of the whole batch, which
  the higher-order steps reuse as their first.

Rows of higher orders are stepped per phase (their solvers may differ) and put back in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saq_lightning.data.mixstep import MixStepPhase
from saq_lightning.sampling.point_step import eps_eff_at_points
from saq_lightning.sampling.predictor import NoisePredictor, select_batch

from .teacher_flow import PointHistory, TeacherFlow, TrainingPoints


def student_orders(flow: TeacherFlow, phases: Sequence[MixStepPhase], phase_index: Tensor,
                   step: Tensor) -> Tensor:
    """Per row, the order the student's sampler uses at that step (``[B]`` long)."""
    out = torch.empty_like(phase_index, dtype=torch.long)
    for p in torch.unique(phase_index).tolist():
        phase = phases[int(p)]
        solver = flow.student_solver(phase)
        rows = phase_index == p
        caps = torch.tensor([solver.order_cap(int(i), int(phase.student_steps))
                             for i in step[rows].tolist()], dtype=torch.long, device=step.device)
        out[rows] = caps.clamp(max=int(phase.student_order))
    return out


class StudentStep(NamedTuple):
    """The student's step at a batch of points: ``eps_eff`` of its own step (what the loss compares
    with the teacher's) and its first-order direction ``eps(x_s, s)`` (the same tensor for order-1
    rows; for higher orders the first evaluation of the step, which only places its later ones)."""

    eps_eff: Tensor
    eps_grid: Tensor
    higher: Tensor  #: ``[B]`` bool, the rows the student steps at order >= 2


def student_step(
    flow: TeacherFlow,
    student: NoisePredictor,
    phases: Sequence[MixStepPhase],
    points: TrainingPoints,
    first_order: Callable[[Tensor, Tensor, Any], Tensor] | None = None,
) -> StudentStep:
    """The student's own step at every point of a batch (with gradients).

    ``first_order(x_s, s, cond)`` evaluates ``eps(x_s, s)`` of every row, in one call (default:
    ``student``); the module passes its ``student_direction``, so that order 1 is today's MOTA
    call itself. Higher-order rows reuse that evaluation and add their solver's others."""
    first_order = first_order or student
    x_s, s, t, cond = points.x_s, points.s, points.t, points.cond
    eps_grid = first_order(x_s, s, cond)
    phase_index = points.phase.to(x_s.device)
    step = torch.zeros_like(phase_index) if points.step is None else points.step.to(x_s.device)
    orders = student_orders(flow, phases, phase_index, step)
    higher = orders > 1
    if not bool(higher.any()):
        return StudentStep(eps_grid, eps_grid, higher)
    history = points.history or PointHistory.none(x_s)
    b = x_s.shape[0]
    eps_eff = eps_grid
    for p in torch.unique(phase_index[higher]).tolist():
        rows = torch.nonzero((phase_index == p) & higher).flatten()
        eps = eps_eff_at_points(student, flow.student_solver(phases[p]), x_s[rows], s[rows], t[rows],
                                orders[rows], select_batch(cond, rows, b), eps_s=eps_grid[rows],
                                **history.rows(rows)._asdict())
        eps_eff = eps_eff.index_copy(0, rows, eps.to(eps_eff.dtype))
    return StudentStep(eps_eff, eps_grid, higher)


def check_phase_solvers(flow: TeacherFlow, phases: Sequence[MixStepPhase],
                        record_fields: dict[str, Any] | None = None, source: str = "") -> None:
    """Raise (naming the phase) if a phase's solver family or orders are unknown to its solver,
    or if records lack the previous grid states (``x_hist``) a multistep step needs."""
    for i, phase in enumerate(phases):
        try:
            student = flow.student_solver(phase)
        except ValueError as err:
            raise ValueError(f"phase {i} ({phase}): {err}") from None
        for who, solver, order in (("teacher", flow.solver, phase.teacher_order),
                                   ("student", student, phase.student_order)):
            if int(order) not in solver.allowed_orders:
                raise ValueError(f"phase {i}: {who}_order {order} is not an order of "
                                 f"{solver.name} (allowed {solver.allowed_orders})")
    size = flow.history_size(phases)
    if record_fields is None or not size:
        return
    found = record_fields.get("x_hist", {}).get("shape", [0])[0] if "x_hist" in record_fields else 0
    if found < size:
        raise ValueError(f"{source}: the phases' multistep steps need the {size} previous grid "
                         f"states of every point (record field x_hist), the records hold "
                         f"{found}; regenerate the shards with this config")
