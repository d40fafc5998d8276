"""``sample``: run a solver over a grid from ``x_T``, optionally recording the whole trajectory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .errors import SolverConfigError
from .grids import Grid, as_grid
from .predictor import Evaluation, NoisePredictor
from .schedules import compute_dtype
from .solver import Orders, Solver, StepState


class StepPoints(NamedTuple):
    """Every (step, sample) pair of a trajectory flattened to rows ``[N * B]`` (step-major)."""

    x_s: Tensor
    s: Tensor
    t: Tensor
    order: Tensor
    eps_eff: Tensor


@dataclass(frozen=True)
class Trajectory:
    """A sampled trajectory on an ``N``-step grid for a batch of ``B``.

    ``states[i]`` is ``x`` at ``times[i]`` (``states[0] = x_T``); step ``i`` goes from
    ``times[i]`` to ``times[i + 1]`` with per-sample ``orders[i]`` and effective direction
    ``eps_eff[i]``. ``evaluations`` lists every model call in order (``step``, batch ``index``
    of a sub-batch, point ``x``, time ``t``, prediction ``eps``): for singlestep solvers these
    include the intermediate points.
    """

    states: Tensor
    times: Tensor
    orders: Tensor
    eps_eff: Tensor
    evaluations: tuple[Evaluation, ...]

    @property
    def steps(self) -> int:
        return self.orders.shape[0]

    def points(self) -> StepPoints:
        """``(x_s, s, t, order, eps_eff)`` of every step and sample, as training rows."""
        n, b = self.orders.shape
        tail = self.states.shape[2:]
        s = self.times[:-1, None].expand(n, b).reshape(-1)
        t = self.times[1:, None].expand(n, b).reshape(-1)
        return StepPoints(
            self.states[:-1].reshape(n * b, *tail), s, t, self.orders.reshape(-1),
            self.eps_eff.reshape(n * b, *tail),
        )


class SampleResult(NamedTuple):
    sample: Tensor
    trajectory: Trajectory


def sample(
    model: NoisePredictor,
    x_T: Tensor,
    grid: Grid | Tensor | Sequence[float],
    solver: Solver,
    *,
    cond: Any = None,
    order: int | Tensor | None = None,
    generator: torch.Generator | None = None,
    return_trajectory: bool = False,
) -> Tensor | SampleResult:
    """Integrate from ``x_T`` at ``grid[0]`` to ``grid[-1]``; return ``x_0`` (or ``SampleResult``).

    Args:
        model: noise predictor ``model(x, t, cond) -> eps``; every call gets the continuous
            time it is made at (``[b]``; a sub-batch when samples use different orders).
        x_T: the start states ``[B, ...]`` (noise at ``grid[0]``).
        grid: strictly decreasing times, or a :class:`Grid` (singlestep DPM-Solver may carry a
            fixed per-step order schedule and explicit intermediate points).
        solver: a :class:`Solver`, e.g. from :func:`make_solver`.
        order: an int or a ``[B]`` integer tensor (default ``solver.order``): the order of each
            sample. Multistep solvers warm up (order ``<= i + 1`` at step ``i``) and may lower
            the last steps (``lower_order_final``); DPM-Solver steps ending at ``t = 0`` are
            first order (``Solver.step_orders``). ``Trajectory.orders`` records what was used.
        generator: random source for stochastic solvers (DDIM with ``eta > 0``).
        return_trajectory: also return every state, time, order, ``eps_eff`` and evaluation.
    """
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a Solver (see make_solver), got {type(solver).__name__}")
    if not isinstance(x_T, Tensor) or not x_T.is_floating_point() or x_T.ndim < 1:
        raise TypeError(f"x_T must be a batched floating-point tensor [B, ...], got {type(x_T).__name__}")
    grid = as_grid(grid)
    b, n = x_T.shape[0], grid.steps
    if grid.orders is not None:
        if order is not None:
            raise SolverConfigError("order must be None when the grid fixes the per-step orders (grid.orders)")
        fixed = {k: Orders.from_arg(k, b, x_T.device, solver.allowed_orders, solver.name)
                 for k in sorted(set(grid.orders))}
        max_order = max(grid.orders)
    else:
        base = Orders.from_arg(solver.order if order is None else order, b, x_T.device,
                               solver.allowed_orders, solver.name)
        max_order = base.max
    solver = solver.for_grid(grid, max_order)
    times = grid.t.to(dtype=compute_dtype(x_T.dtype)).to(device=x_T.device)
    inner_all = None if grid.inner is None else grid.inner.to(dtype=times.dtype).to(device=x_T.device)
    history: tuple[Evaluation, ...] = ()
    x = x_T
    states, orders_used, directions, evaluations = [x_T], [], [], []
    for i in range(n):
        s_b, t_b = times[i].expand(b), times[i + 1].expand(b)
        inner = None
        if grid.orders is not None:
            orders = fixed[grid.orders[i]]
            if inner_all is not None:
                inner = inner_all[i].expand(b, 2)
        else:  # the grid's times on the CPU: no device sync
            orders = solver.step_orders(base.capped(solver.order_cap(i, n)), grid.t[i + 1].expand(b))
        out = solver.step(StepState(model, x, s_b, t_b, orders, cond, history=history, inner=inner,
                                    generator=generator))
        if solver.history_size:
            history = (history + (Evaluation(x, s_b, out.eps_s),))[-solver.history_size:]
        if return_trajectory:
            states.append(out.x_t)
            orders_used.append(out.order)
            directions.append(out.eps_eff)
            evaluations.extend(ev._replace(step=i) for ev in out.evaluations)
        x = out.x_t
    if not return_trajectory:
        return x
    traj = Trajectory(torch.stack(states), times, torch.stack(orders_used), torch.stack(directions),
                      tuple(evaluations))
    return SampleResult(x, traj)
