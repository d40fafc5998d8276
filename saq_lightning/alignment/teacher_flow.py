"""The frozen FP teacher as the source of trajectories and of alignment targets.

One object answers both questions the training system asks of the teacher, with the same solver,
grid and guidance, so that targets cached in shards (``generate``) and targets computed online
(``fit``) are the same numbers:

* :meth:`TeacherFlow.rollout`: the teacher's order-k trajectory over a mixstep phase's grid,
  as a :class:`~saq_lightning.sampling.Trajectory` on the *student's* grid (when the teacher
  takes ``m = teacher_steps / student_steps`` steps per student step, every m-th state is kept
  and ``eps_eff`` is that of the composite step);
* :meth:`TeacherFlow.targets`: ``eps_eff`` of the teacher's order-k step ``s -> t`` at given points
  (singlestep solvers make it a pure function of the point; with ``m > 1`` the m teacher
  substeps are taken on the phase's teacher grid). Multistep families (``dpm_multistep``,
  ``dpm++_multistep``, ``plms``) also need the previous grid states of the point's trajectory
  (``history_x``, see :func:`~saq_lightning.sampling.point_step.eps_eff_at_points`); there the
  teacher re-evaluates its history, which equals the rollout's when ``m = 1``.

:func:`family_solver` gives the solver of a family name, for the teacher and for the student's
own step inside the loss (``MixStepPhase.student_solver``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saq_lightning.data.mixstep import MixStepPhase
from saq_lightning.models import DiffusionModel
from saq_lightning.sampling import (
    GridError,
    Solver,
    Trajectory,
    eps_eff_from_states,
    make_solver,
    sample,
    step_coefficients,
    step_with_direction,
    time_grid,
)
from saq_lightning.sampling.point_step import eps_eff_at_points
from saq_lightning.sampling.predictor import select_batch

from .settings import TeacherSettings

#: the solver of each family; a per-sample ``order`` selects the order (1..3, PLMS 1..4)
FAMILY_SOLVERS = {"dpm": "dpm3", "dpm++": "dpm++3s", "dpm_multistep": "dpm3m",
                  "dpm++_multistep": "dpm++3m", "plms": "plms"}
SOLVER_FAMILIES = tuple(FAMILY_SOLVERS)


def family_solver(family: str, schedule: Any, spacing: str) -> Solver:
    """The solver of ``family`` (a key of :data:`FAMILY_SOLVERS`); singlestep DPM-Solver places its
    intermediate points by the run's ``spacing`` rule, as the sampler does on that grid."""
    if family not in FAMILY_SOLVERS:
        raise ValueError(f"solver family must be one of {SOLVER_FAMILIES}, got {family!r}")
    options = {"spacing": spacing} if family in ("dpm", "dpm++") else {}
    return make_solver(FAMILY_SOLVERS[family], schedule, **options)


def history_points(states: Tensor, times: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per step of a trajectory (``states [N + 1, B, ...]``, ``times [N + 1]``), the ``size``
    previous states, most recent first: ``x [N, B, size, ...]``, ``t [N, B, size]`` and how
    many are real, ``available [N, B]`` (missing entries repeat ``x_T`` at ``times[0]``)."""
    n, b = states.shape[0] - 1, states.shape[1]
    idx = torch.arange(n)[:, None] - 1 - torch.arange(size)[None, :]  # [N, size]
    real = idx >= 0
    idx = idx.clamp(min=0)
    x = states[idx.flatten()].reshape(n, size, *states.shape[1:]).transpose(1, 2)
    t = times[idx.to(times.device)].reshape(n, 1, size).expand(n, b, size)
    avail = real.sum(dim=1).to(states.device)[:, None].expand(n, b)
    return x, t, avail
#: how close (in continuous time) a point's ``s``/``t`` must be to the phase's teacher grid
GRID_TOLERANCE = 1e-5


class PointHistory(NamedTuple):
    """The previous grid states of a batch of points (multistep solvers), most recent first."""

    history_x: Tensor | None  # [B, H, ...]
    history_t: Tensor | None  # [B, H]
    available: Tensor | None  # [B]

    @classmethod
    def none(cls, x_s: Tensor) -> PointHistory:
        return cls(None, None, torch.zeros(x_s.shape[0], dtype=torch.long, device=x_s.device))

    def rows(self, rows: Tensor) -> PointHistory:
        return PointHistory(*(None if v is None else v[rows] for v in self))


@dataclass(frozen=True)
class TrainingPoints:
    """A batch of trajectory points to align on: ``x_s`` at ``s``, its step ``s -> t`` of the
    teacher's ``order``, its mixstep ``phase`` index and condition; ``eps_eff`` the cached target
    (``None``: computed online), ``step`` the point's index on its phase's student grid (``None``:
    0), ``history`` its previous grid states (multistep solvers)."""

    x_s: Tensor
    s: Tensor
    t: Tensor
    order: Tensor
    phase: Tensor
    cond: Any = None
    eps_eff: Tensor | None = None
    step: Tensor | None = None
    history: PointHistory | None = None


class TeacherFlow:
    """Trajectories and targets of ``model`` (the frozen teacher) under ``settings``."""

    def __init__(self, model: DiffusionModel, settings: TeacherSettings) -> None:
        self.model = model
        self.settings = settings
        self.schedule = model.noise_schedule()
        # intermediate points by the run's spacing rule, in rollouts and in targets at points alike
        self.solver = family_solver(settings.solver, self.schedule, settings.spacing)

    # ------------------------------------------------------------------ building blocks
    def predictor(self, model: DiffusionModel | None = None) -> Any:
        """``model`` (default: the teacher) as a noise predictor, with the run's guidance."""
        return (model or self.model).noise_predictor(self.settings.guidance_scale, self.schedule)

    def grid(self, steps: int) -> Tensor:
        """The run's time grid of ``steps`` steps (float64, CPU)."""
        return time_grid(self.schedule, steps, self.settings.spacing)

    def student_solver(self, phase: MixStepPhase) -> Solver:
        """The solver the student of ``phase`` will be sampled with (default: the teacher's family)."""
        family = getattr(phase, "student_solver", None) or self.settings.solver
        return self.solver if family == self.settings.solver else family_solver(
            family, self.schedule, self.settings.spacing)

    def history_size(self, phases: Sequence[MixStepPhase]) -> int:
        """How many previous grid states a point needs for the multistep steps of ``phases``
        (the teacher's, and every phase's student's): 0 when all are singlestep."""
        return max((min(int(order) - 1, solver.history_size) for p in phases
                    for solver, order in ((self.solver, p.teacher_order),
                                          (self.student_solver(p), p.student_order))), default=0)

    def record_history(self, x_hist: Tensor | None, step: Tensor, phase_index: Tensor,
                       phases: Sequence[MixStepPhase], time_dtype: torch.dtype) -> PointHistory | None:
        """The :class:`PointHistory` of record rows (``x_hist [B, H, ...]``, ``step``, ``phase``):
        the times are the phase's student grid at ``step - 1, step - 2, ...``."""
        if x_hist is None:
            return None
        b, size = x_hist.shape[:2]
        times = torch.empty(b, size, dtype=time_dtype, device=x_hist.device)
        back = torch.arange(1, size + 1, device=step.device)
        for p in torch.unique(phase_index).tolist():
            rows = torch.nonzero(phase_index == p).flatten()
            grid = self.grid(int(phases[int(p)].student_steps)).to(device=x_hist.device)
            idx = (step[rows, None] - back[None, :]).clamp(min=0)
            times[rows] = grid[idx].to(time_dtype)
        return PointHistory(x_hist, times, step.clamp(max=size))

    # ------------------------------------------------------------------ trajectories
    @torch.no_grad()
    def rollout(self, x_T: Tensor, cond: Any, phase: MixStepPhase, keep_evaluations: bool = False) -> Trajectory:
        """The teacher's ``phase.teacher_order`` trajectory from ``x_T``, on the student grid.

        ``states[j]`` is the point ``x_s`` of student step ``j`` (``times[j] -> times[j + 1]``),
        ``eps_eff[j]`` its target, ``orders[j]`` the teacher order used. ``keep_evaluations``: keep
        the sampler's evaluation record (intermediate points; only with one teacher step per
        student step).
        """
        grid = self.grid(int(phase.teacher_steps))
        res = sample(self.predictor(), x_T, grid, self.solver, cond=cond,
                     order=int(phase.teacher_order), return_trajectory=True)
        traj = res.trajectory
        m = int(phase.teacher_steps) // int(phase.student_steps)
        if m == 1:
            evaluations = traj.evaluations if keep_evaluations else ()
            return Trajectory(traj.states, traj.times, traj.orders, traj.eps_eff, evaluations)
        if keep_evaluations:
            raise ValueError(f"phase {phase}: evaluations of the teacher's substeps do not belong to the "
                             f"student grid (teacher_steps != student_steps)")
        states, times = traj.states[::m], traj.times[::m]
        b = x_T.shape[0]
        eps = torch.stack([
            eps_eff_from_states(states[j], states[j + 1],
                                step_coefficients(self.schedule, times[j].expand(b),
                                                  times[j + 1].expand(b)))
            for j in range(times.numel() - 1)
        ])
        orders = traj.orders.reshape(-1, m, b).amin(dim=1)
        return Trajectory(states, times, orders, eps, ())

    # ------------------------------------------------------------------ targets at points
    @torch.no_grad()
    def step_targets(self, x_s: Tensor, s: Tensor, t: Tensor, order: Tensor | int, cond: Any,
                     history: PointHistory | None = None) -> Tensor:
        """``eps_eff`` of one teacher step ``s -> t`` of the given per-sample order at ``x_s``.

        Order 1 is the same-input target: the teacher's (guided) ``eps(x_s, s)``. Multistep
        families need ``history`` (the previous grid states) for rows of order >= 2.
        """
        order = torch.as_tensor(order, device=x_s.device).expand(x_s.shape[0])
        return eps_eff_at_points(self.predictor(), self.solver, x_s, s, t, order, cond,
                                 **(history or PointHistory.none(x_s))._asdict())

    @torch.no_grad()
    def substep_targets(
        self, x_s: Tensor, s: Tensor, t: Tensor, order: Tensor | int, cond: Any, phase: MixStepPhase,
        history: PointHistory | None = None,
    ) -> Tensor:
        """``eps_eff`` of the ``m = teacher_steps / student_steps`` teacher steps from ``s`` to ``t``
        on ``phase``'s teacher grid (``m = 1``: :meth:`step_targets`)."""
        m = int(phase.teacher_steps) // int(phase.student_steps)
        if m == 1:
            return self.step_targets(x_s, s, t, order, cond, history)
        if self.solver.history_size:
            raise ValueError(
                f"phase {phase}: targets at points of a multistep teacher ({self.settings.solver}) "
                f"with teacher_steps != student_steps need the teacher's own history on its finer "
                f"grid, which records do not hold: use targets from the shards "
                f"(generation.store_targets) or the on-the-fly mode")
        grid = self.grid(int(phase.teacher_steps)).to(device=s.device, dtype=s.dtype)
        idx = (grid[None, :] - s[:, None]).abs().argmin(dim=1)
        end = (idx + m).clamp(max=grid.numel() - 1)
        off = ((grid[idx] - s).abs() > GRID_TOLERANCE) | ((grid[end] - t).abs() > GRID_TOLERANCE)
        off |= (idx % m != 0) | (idx + m > grid.numel() - 1)
        if bool(off.any()):
            i = int(torch.nonzero(off)[0])
            raise GridError(
                f"point with s={float(s[i]):.6g}, t={float(t[i]):.6g} is not a student step of the "
                f"phase {phase} on the {self.settings.spacing} grid of {phase.teacher_steps} "
                f"teacher steps: the data was made with another grid")
        x = x_s
        for j in range(m):
            x = step_with_direction(self.predictor(), x, grid[idx + j], grid[idx + j + 1],
                                    self.solver, order=order, cond=cond).x_t
        return eps_eff_from_states(x_s, x, step_coefficients(self.schedule, s, t))

    @torch.no_grad()
    def intermediate_targets(self, x_s: Tensor, s: Tensor, t: Tensor, order: Tensor, cond: Any) -> Tensor:
        """The literal target of the authors' code: the teacher's ``eps(u, s1)`` at the
        intermediate point ``u`` of its DPM-Solver-2 step ``s -> t`` (order-1 rows, and steps
        that end at ``t = 0``: ``eps(x_s, s)``).

        ``eps_eff = eps_s + (eps(u, s1) - eps_s) / (2 r1)`` with ``r1 = (lambda(s1) - lambda(s)) / h``,
        so the two agree only where ``s1`` is the ``lambda``-midpoint (``logSNR`` grids); on
        ``time_uniform`` grids ``r1`` falls to ~0.2 at the last steps and ``eps(u, s1)`` carries
        only ``2 r1`` of the second-order correction."""
        if self.settings.solver != "dpm":
            raise ValueError(f"the intermediate-point target is DPM-Solver-2's eps(u, s1): teacher_solver "
                             f"must be 'dpm', got {self.settings.solver!r}")
        order = torch.as_tensor(order, device=x_s.device).expand(x_s.shape[0])
        if bool((order > 2).any()):
            raise ValueError(f"the intermediate-point target is defined for teacher orders 1 and 2, the "
                             f"batch holds order {int(order.max())}")
        predictor = self.predictor()
        eps_s = predictor(x_s, s, cond)
        second = (order == 2) & (t > 0)
        if not bool(second.any()):
            return eps_s
        rows = torch.nonzero(second).flatten()
        b = x_s.shape[0]
        xr, sr, tr = x_s[rows], s[rows], t[rows]
        cr = select_batch(cond, rows, b)
        s1 = self.solver.spacing_inner(sr, tr, order[rows])[:, 0].to(sr.dtype)
        u = step_with_direction(predictor, xr, sr, s1, self.solver, order=1, cond=cr,
                                eps_s=eps_s[rows]).x_t
        return eps_s.index_copy(0, rows, predictor(u, s1, cr).to(eps_s.dtype))

    @torch.no_grad()
    def targets(
        self,
        x_s: Tensor,
        s: Tensor,
        t: Tensor,
        order: Tensor,
        cond: Any,
        phase_index: Tensor | None = None,
        phases: Sequence[MixStepPhase] | None = None,
        history: PointHistory | None = None,
    ) -> Tensor:
        """Mixed-order targets of a batch of points; rows may belong to different phases."""
        if phases is None or phase_index is None or all(
                p.teacher_steps == p.student_steps for p in phases):
            return self.step_targets(x_s, s, t, order, cond, history)
        out = torch.empty_like(x_s)
        b = x_s.shape[0]
        for p in torch.unique(phase_index).tolist():
            if not 0 <= p < len(phases):
                raise ValueError(f"batch holds phase {p}, the run has {len(phases)} phases")
            rows = torch.nonzero(phase_index == p).flatten()
            out[rows] = self.substep_targets(x_s[rows], s[rows], t[rows], order[rows],
                                             select_batch(cond, rows, b), phases[p],
                                             None if history is None else history.rows(rows))
        return out
