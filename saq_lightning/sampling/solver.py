"""What every solver shares: per-sample orders, the step's state in and result out, ``Solver``.

A step is ``solver.step(StepState) -> StepOutput``. Solvers are immutable: a multistep solver's
history is passed in by the caller (``StepState.history``, oldest first), never kept in the object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import GridError, SolverConfigError
from .grids import Grid
from .predictor import Evaluation, NoisePredictor, evaluate, select_batch
from .schedules import NoiseSchedule


@dataclass(frozen=True)
class Orders:
    """Per-sample solver orders ``[B]`` plus the set of values present (known without a device sync)."""

    per_sample: Tensor
    values: frozenset[int]

    @classmethod
    def from_arg(cls, order: int | Tensor, batch_size: int, device: torch.device, allowed: Sequence[int],
                 solver_name: str) -> Orders:
        """Validate ``order`` (an int or a ``[B]`` integer tensor) against the solver's ``allowed`` orders."""
        if isinstance(order, Tensor):
            if order.is_floating_point() or order.is_complex() or order.dtype == torch.bool:
                raise SolverConfigError(f"order must be an integer tensor, got dtype {order.dtype}")
            if order.ndim == 0:
                order = int(order.item())
            elif order.ndim != 1 or order.shape[0] != batch_size:
                raise SolverConfigError(
                    f"order must be an int or a [B] = [{batch_size}] tensor, got shape {tuple(order.shape)}"
                )
        if isinstance(order, Tensor):
            values = frozenset(int(v) for v in torch.unique(order.detach().cpu()).tolist())
            per_sample = order.to(device=device, dtype=torch.long)
        else:
            if isinstance(order, bool) or int(order) != order:
                raise SolverConfigError(f"order must be an int, got {order!r}")
            values = frozenset({int(order)})
            per_sample = torch.full((batch_size,), int(order), dtype=torch.long, device=device)
        bad = sorted(values - set(allowed))
        if bad:
            raise SolverConfigError(
                f"order must be in {tuple(allowed)} for {solver_name}, got {bad[0] if len(bad) == 1 else bad}"
            )
        return cls(per_sample, values)

    @property
    def max(self) -> int:
        return max(self.values)

    @property
    def uniform(self) -> int | None:
        return next(iter(self.values)) if len(self.values) == 1 else None

    def capped(self, cap: int) -> Orders:
        """``min(order, cap)`` per sample."""
        if cap >= self.max:
            return self
        return Orders(self.per_sample.clamp(max=cap), frozenset(min(v, cap) for v in self.values))

    def where_at_least(self, k: int) -> Tensor:
        """Boolean ``[B]`` mask of samples of order >= k."""
        return self.per_sample >= k

    def first_order_where(self, mask: Tensor) -> Orders:
        """Order 1 on the rows of ``mask`` ``[B]`` (no device sync when ``mask`` is on the CPU)."""
        if self.max == 1 or not bool(mask.any()):
            return self
        if bool(mask.all()):
            return Orders(torch.ones_like(self.per_sample), frozenset({1}))
        per_sample = torch.where(mask.to(self.per_sample.device), torch.ones_like(self.per_sample),
                                 self.per_sample)
        return Orders(per_sample, frozenset(int(v) for v in torch.unique(per_sample.cpu()).tolist()))

    def rows_at_least(self, k: int) -> Tensor | None:
        """Batch rows of order >= k: ``None`` for all of them (no sync needed), else an index tensor."""
        if min(self.values) >= k:
            return None
        return torch.nonzero(self.per_sample >= k, as_tuple=False).flatten()


@dataclass(frozen=True)
class StepState:
    """One checked step ``(x, s) -> t`` of per-sample ``orders``: what a solver's ``step`` reads.

    ``eps_s`` is the model's prediction at ``(x, s)`` when already known. The last three fields
    belong to one family each: ``history`` (multistep solvers: previous evaluations, full batch,
    oldest first), ``inner`` (singlestep ``DPMSolver``: intermediate times ``[B, 2]``) and
    ``generator`` (``DDIM`` with ``eta > 0``); the other families do not read them.
    """

    model: NoisePredictor
    x: Tensor
    s: Tensor
    t: Tensor
    orders: Orders
    cond: Any = None
    eps_s: Tensor | None = None
    history: tuple[Evaluation, ...] = ()
    inner: Tensor | None = None
    generator: torch.Generator | None = None

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    def start(self) -> tuple[Tensor, tuple[Evaluation, ...]]:
        """``eps`` at ``(x, s)`` and the evaluation made for it (none when ``eps_s`` was given)."""
        if self.eps_s is not None:
            return self.eps_s, ()
        eps = evaluate(self.model, self.x, self.s, self.cond)
        return eps, (Evaluation(self.x, self.s, eps),)

    def evaluate_rows(self, x: Tensor, t: Tensor, rows: Tensor | None) -> tuple[Tensor, Evaluation]:
        """The model on batch ``rows`` (``None``: all) of ``(x, t)``, as a full-batch result.

        Rows not evaluated are zero in the returned tensor; callers select them away with ``where``.
        """
        if rows is None:
            eps = evaluate(self.model, x, t, self.cond)
            return eps, Evaluation(x, t, eps)
        xr, tr = x[rows], t[rows]
        eps_r = evaluate(self.model, xr, tr, select_batch(self.cond, rows, self.batch_size))
        full = torch.zeros_like(x).index_copy(0, rows, eps_r.to(x.dtype))
        return full, Evaluation(xr, tr, eps_r, rows)


@dataclass(frozen=True)
class StepOutput:
    """One solver step ``(x_s, s) -> (x_t, t)``.

    ``eps_eff`` is the first-order direction that lands on ``x_t``:
    ``x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_eff``. ``order`` is the order each
    sample actually used; ``eps_s`` the model's prediction at ``(x_s, s)`` (the next multistep
    step's history); ``evaluations`` every model call the step made, in order.
    """

    x_t: Tensor
    eps_eff: Tensor
    order: Tensor
    eps_s: Tensor
    evaluations: tuple[Evaluation, ...]


class Solver(ABC):
    """A solver of the probability-flow ODE for a noise-prediction model.

    Subclasses are frozen dataclasses with a ``schedule`` field and a default ``order``; a step
    is ``step(StepState) -> StepOutput``. The checked entries are
    :func:`~saq_lightning.sampling.sample` and
    :func:`~saq_lightning.sampling.step_with_direction`.
    """

    schedule: NoiseSchedule
    order: int

    #: orders a sample may request
    allowed_orders: tuple[int, ...] = (1,)
    #: how many previous evaluations (``StepState.history``) a step may use; 0: singlestep
    history_size: int = 0

    @property
    def name(self) -> str:
        return type(self).__name__

    def check_order(self) -> None:
        if self.order not in self.allowed_orders:
            raise SolverConfigError(f"order must be in {self.allowed_orders} for {self.name}, got {self.order!r}")

    def for_grid(self, grid: Grid, max_order: int) -> Solver:
        """This solver, ready for a sampling loop over ``grid`` up to ``max_order``; raises if it
        cannot run that grid."""
        if grid.inner is not None:
            raise GridError(f"a grid with inner points is for singlestep DPMSolver, not {self.name}")
        return self

    def order_cap(self, step: int, steps: int) -> int:
        """The highest order step ``step`` (0-based) of ``steps`` may use inside a sampling loop."""
        return max(self.allowed_orders)

    def step_orders(self, orders: Orders, t: Tensor) -> Orders:
        """The orders a step ending at ``t`` ``[B]`` uses when ``orders`` are requested."""
        return orders

    def history_needed(self, order: int) -> int:
        """How many previous evaluations a step of ``order`` needs."""
        return min(order - 1, self.history_size)

    def check_history(self, state: StepState) -> None:
        need = self.history_needed(state.orders.max)
        if len(state.history) < need:
            raise SolverConfigError(f"{self.name} of order {state.orders.max} needs {need} previous "
                                    f"evaluations in history, got {len(state.history)}")

    @abstractmethod
    def step(self, state: StepState) -> StepOutput:
        """One step; ``state`` is already validated (use ``step_with_direction`` for checked calls)."""
