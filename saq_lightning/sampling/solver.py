"""What every solver shares: per-sample orders, the step output, and the ``Solver`` interface.

Solvers are immutable: a multistep solver's history is passed in by the caller (a sequence of
:class:`~saq_lightning.sampling.predictor.Evaluation`, oldest first), never kept in the object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import SolverConfigError
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

    def rows_at_least(self, k: int) -> Tensor | None:
        """Batch rows of order >= k: ``None`` for all of them (no sync needed), else an index tensor."""
        if min(self.values) >= k:
            return None
        return torch.nonzero(self.per_sample >= k, as_tuple=False).flatten()


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


def evaluate_rows(model: NoisePredictor, x: Tensor, t: Tensor, cond: Any, rows: Tensor | None,
                  batch_size: int) -> tuple[Tensor, Evaluation]:
    """Evaluate the model on batch ``rows`` (``None``: all) and return a full-batch result.

    Rows not evaluated are zero in the returned tensor; callers select them away with ``where``.
    """
    if rows is None:
        eps = evaluate(model, x, t, cond)
        return eps, Evaluation(x, t, eps)
    xr, tr = x[rows], t[rows]
    eps_r = evaluate(model, xr, tr, select_batch(cond, rows, batch_size))
    full = torch.zeros_like(x).index_copy(0, rows, eps_r.to(x.dtype))
    return full, Evaluation(xr, tr, eps_r, rows)


class Solver(ABC):
    """A solver of the probability-flow ODE for a noise-prediction model.

    Subclasses are frozen dataclasses with a ``schedule`` field and a default ``order``.
    """

    schedule: NoiseSchedule
    order: int

    #: orders a sample may request
    allowed_orders: tuple[int, ...] = (1,)
    #: whether the step uses previous evaluations (``history``)
    multistep: bool = False
    #: whether a step ending at ``sigma_t = 0`` (``t = 0``) must be first order (coefficients
    #: depend on ``h``, which is infinite there)
    first_order_at_zero: bool = False
    #: whether ``step`` takes explicit intermediate times (``inner``)
    accepts_inner: bool = False

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def history_size(self) -> int:
        """How many previous evaluations a step may use."""
        return max(self.allowed_orders) - 1 if self.multistep else 0

    def check_order(self) -> None:
        if self.order not in self.allowed_orders:
            raise SolverConfigError(f"order must be in {self.allowed_orders} for {self.name}, got {self.order!r}")

    def check_steps(self, steps: int, max_order: int) -> None:
        """Raise if a grid of ``steps`` steps cannot be used at ``max_order``."""

    def order_cap(self, step: int, steps: int) -> int:
        """The highest order step ``step`` (0-based) of ``steps`` may use inside a sampling loop."""
        return max(self.allowed_orders)

    def history_needed(self, order: int) -> int:
        """How many previous evaluations a step of ``order`` needs."""
        return order - 1 if self.multistep else 0

    @abstractmethod
    def step(
        self,
        model: NoisePredictor,
        x_s: Tensor,
        s: Tensor,
        t: Tensor,
        cond: Any,
        orders: Orders,
        *,
        history: Sequence[Evaluation] = (),
        eps_s: Tensor | None = None,
        inner: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One step; inputs are already validated (use ``step_with_direction`` for checked calls)."""
