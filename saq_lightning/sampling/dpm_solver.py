"""DPM-Solver (Lu et al. 2022) and DPM-Solver++ (data prediction), singlestep and multistep.

Both algorithms integrate the probability-flow ODE exactly in its linear part and Taylor-expand
the model output in ``lambda``: ``algorithm="dpmsolver"`` expands the noise prediction,
``"dpmsolver++"`` the data prediction ``x0 = (x - sigma eps) / alpha``. A k-th order step is a
first-order step with the effective direction ``m0 + c1 D1 + c2 D2`` (``D1 ~ h m'``,
``D2 ~ h^2 m''``); see :mod:`.exponential`.

``solver_type`` selects how the second-order term is weighted, with the same names as diffusers:

* ``"midpoint"``: weight ``1/2`` (DPM-Solver-2 / DPM-Solver++(2M) as published);
* ``"heun"``: weight ``phi_2(h)/phi_1(h)`` (the exact Taylor coefficient);
* ``"dpmsolver"`` (singlestep only, the default): the published DPM-Solver-3, whose second
  intermediate point uses the Taylor weight and whose final step uses ``(m2 - m0)/r2``; equal to
  ``"midpoint"`` at orders 1 and 2. (diffusers' singlestep order 3 is ``"midpoint"`` -- the
  intermediate point with weight 1/2 -- or ``"heun"`` -- a full Taylor final step.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import SolverConfigError
from .exponential import (
    StepCoefficients,
    bview,
    data_step,
    eps_from_x0,
    noise_step,
    phi_ratio,
    retarget,
    step_coefficients,
    x0_from_eps,
)
from .grids import SPACING_COORDINATE, Grid, recognise_spacing, spacing_points
from .schedules import NoiseSchedule
from .solver import Orders, Solver, StepOutput, StepState

ALGORITHMS = ("dpmsolver", "dpmsolver++")
INTERMEDIATE_RULES = ("spacing", "lambda")
#: ``lower_order_final`` lowers the last orders below this many steps: DPM-Solver's reference
#: code uses 10, diffusers' ``DPMSolverMultistepScheduler`` 15
REFERENCE_LOWER_ORDER_FINAL_STEPS = 10
DIFFUSERS_LOWER_ORDER_FINAL_STEPS = 15


def _mask(cond: Tensor, like: Tensor) -> Tensor:
    return cond.reshape(cond.shape[0], *([1] * (like.ndim - 1)))


class _DPMSolverBase(Solver):
    """Parameterisation helpers shared by the singlestep and multistep solvers."""

    schedule: NoiseSchedule
    algorithm: str
    solver_type: str

    allowed_orders = (1, 2, 3)
    _solver_types: tuple[str, ...] = ("midpoint", "heun")

    def step_orders(self, orders: Orders, t: Tensor) -> Orders:
        # the coefficients depend on h = lambda_t - lambda_s, infinite at t = 0 (sigma_t = 0)
        return orders.first_order_where(t <= 0)

    def _check_common(self) -> None:
        self.check_order()
        if self.algorithm not in ALGORITHMS:
            raise SolverConfigError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.solver_type not in self._solver_types:
            raise SolverConfigError(
                f"solver_type must be one of {self._solver_types} for {self.name}, got {self.solver_type!r}"
            )

    @property
    def data_prediction(self) -> bool:
        return self.algorithm == "dpmsolver++"

    def _output(self, x: Tensor, alpha: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
        """The model output in the solver's parameterisation (eps, or x0 for DPM-Solver++)."""
        if not self.data_prediction:
            return eps.to(x.dtype)
        return x0_from_eps(x, alpha, sigma, eps.to(x.dtype))

    def _g(self, h: Tensor) -> Tensor:
        """Argument of ``phi``: ``h`` for noise prediction, ``-h`` for data prediction."""
        return -h if self.data_prediction else h

    def _advance(self, x_s: Tensor, c: StepCoefficients, direction: Tensor) -> Tensor:
        return data_step(x_s, c, direction) if self.data_prediction else noise_step(x_s, c, direction)

    def _eps_eff(self, x_s: Tensor, c: StepCoefficients, direction: Tensor) -> Tensor:
        if not self.data_prediction:
            return direction
        return eps_from_x0(x_s, c.alpha_s, c.sigma_s, direction)

    def _second_order_weight(self, h: Tensor, like: Tensor) -> Tensor | float:
        if self.solver_type == "heun":
            return bview(phi_ratio(2, self._g(h)), like)
        return 0.5


@dataclass(frozen=True)
class DPMSolver(_DPMSolverBase):
    """Singlestep DPM-Solver-k / DPM-Solver++(kS): k model calls per step, no history.

    Where the intermediate points of a step ``s -> t`` sit (unless ``inner`` times are given to
    :meth:`step`), by ``intermediate``:

    * ``"spacing"`` (default, DPM-Solver's reference rule): the step is divided into ``k``
      sub-steps by the outer grid's own spacing rule (``spacing``: uniform in ``t`` for
      ``time_uniform``/``leading``, in ``sqrt(t)`` for ``time_quadratic``, in ``lambda`` for
      ``logSNR``). ``spacing=None``: :func:`~saq_lightning.sampling.sample` recognises it from
      the grid; a lone step needs it set.
    * ``"lambda"``: fixed fractions of the step in ``lambda``: ``r2`` for order 2 (1/2, where
      ``eps_eff`` equals the model's prediction at the midpoint) and ``r3`` for order 3
      (1/3, 2/3). Equal to ``"spacing"`` on ``logSNR`` grids.
    """

    schedule: NoiseSchedule
    order: int = 2
    algorithm: str = "dpmsolver"
    solver_type: str = "dpmsolver"
    r2: float = 0.5
    r3: tuple[float, float] = (1.0 / 3.0, 2.0 / 3.0)
    intermediate: str = "spacing"
    spacing: str | None = None

    _solver_types = ("dpmsolver", "midpoint", "heun")

    def __post_init__(self) -> None:
        self._check_common()
        if not 0.0 < self.r2 < 1.0:
            raise SolverConfigError(f"r2 must lie in (0, 1), got {self.r2!r}")
        if len(self.r3) != 2 or not 0.0 < self.r3[0] < self.r3[1] < 1.0:
            raise SolverConfigError(f"r3 must be (r1, r2) with 0 < r1 < r2 < 1, got {self.r3!r}")
        if self.intermediate not in INTERMEDIATE_RULES:
            raise SolverConfigError(f"intermediate must be one of {INTERMEDIATE_RULES}, got "
                                    f"{self.intermediate!r}")
        if self.spacing is not None and self.spacing not in SPACING_COORDINATE:
            raise SolverConfigError(f"spacing must be one of {tuple(SPACING_COORDINATE)} or None, "
                                    f"got {self.spacing!r}")

    def spacing_inner(self, s: Tensor, t: Tensor, order: Tensor) -> Tensor:
        """Intermediate times ``[B, 2]`` by the spacing rule (order-2 rows: the midpoint first)."""
        if self.spacing is None:
            raise SolverConfigError(
                "singlestep DPM-Solver places intermediate points by the grid's spacing rule "
                "(DPM-Solver's reference rule) but does not know the spacing here: pass "
                "spacing=... to the solver (time_uniform, time_quadratic, logSNR, leading), or "
                "intermediate='lambda' for fixed lambda-fractions")
        pts = spacing_points(self.schedule, s, t, self.spacing, (0.5, 1.0 / 3.0, 2.0 / 3.0))
        s1 = torch.where(order == 3, pts[..., 1], pts[..., 0])
        return torch.stack([s1, pts[..., 2]], dim=-1)

    def for_grid(self, grid: Grid, max_order: int) -> DPMSolver:
        if grid.inner is not None or self.intermediate != "spacing" or self.spacing or max_order == 1:
            return self  # nothing to learn from the grid
        spacing = recognise_spacing(self.schedule, grid.t)
        if spacing is None:
            raise SolverConfigError(
                f"{self.name} places intermediate points by the grid's spacing rule (DPM-Solver's "
                f"reference rule), and this grid of {grid.steps} steps is not uniform in t, sqrt(t) "
                f"or lambda: pass spacing=... to the solver, or intermediate='lambda'")
        return dataclasses.replace(self, spacing=spacing)

    def step(self, state: StepState) -> StepOutput:
        x_s, s, t, orders, inner = state.x, state.s, state.t, state.orders, state.inner
        sch = self.schedule
        eps_s, evals = state.start()
        c = step_coefficients(sch, s, t)
        h = c.h
        h = torch.where(torch.isfinite(h), h, torch.ones_like(h))  # rows forced to order 1
        order = orders.per_sample
        m0 = self._output(x_s, c.alpha_s, c.sigma_s, eps_s)
        direction = m0
        if orders.max >= 2 and inner is None and self.intermediate == "spacing":
            inner = self.spacing_inner(s, torch.where(t > 0, t, s * 0.5), order)
        if orders.max >= 2:
            if inner is not None:
                s1 = inner[:, 0].to(h)
                c1 = retarget(c, sch, s1)
                r1 = (c1.lambda_t - c.lambda_s) / h
            else:
                r1 = torch.where(order == 2, torch.full_like(h, self.r2), torch.full_like(h, self.r3[0]))
                s1 = sch.t_from_lambda(c.lambda_s + r1 * h)
                c1 = retarget(c, sch, s1)
            u1 = self._advance(x_s, c1, m0)
            e1, ev = state.evaluate_rows(u1, s1, orders.rows_at_least(2))
            evals += (ev,)
            m1 = self._output(u1, c1.alpha_t, c1.sigma_t, e1)
            d1 = (m1 - m0) / bview(r1, x_s)
            direction = torch.where(_mask(order == 2, x_s), m0 + self._second_order_weight(h, x_s) * d1, direction)
            if orders.max >= 3:
                if inner is not None:
                    s2 = inner[:, 1].to(h)
                    c2 = retarget(c, sch, s2)
                    r2 = (c2.lambda_t - c.lambda_s) / h
                else:
                    r2 = torch.full_like(h, self.r3[1])
                    s2 = sch.t_from_lambda(c.lambda_s + r2 * h)
                    c2 = retarget(c, sch, s2)
                # second-order step s -> s2 from (m0, m1); its own step is r2 h, on which u1 sits at r1/r2
                w_u2 = 0.5 if self.solver_type == "midpoint" else bview(phi_ratio(2, self._g(r2 * h)), x_s)
                u2 = self._advance(x_s, c2, m0 + w_u2 * (m1 - m0) * bview(r2 / r1, x_s))
                e2, ev = state.evaluate_rows(u2, s2, orders.rows_at_least(3))
                evals += (ev,)
                m2 = self._output(u2, c2.alpha_t, c2.sigma_t, e2)
                rho2 = bview(phi_ratio(2, self._g(h)), x_s)
                if self.solver_type == "heun":
                    d1_0 = (m1 - m0) / bview(r1, x_s)
                    d1_1 = (m2 - m0) / bview(r2, x_s)
                    dr = bview(r2 - r1, x_s)
                    d1 = (bview(r2, x_s) * d1_0 - bview(r1, x_s) * d1_1) / dr
                    d2 = 2.0 * (d1_1 - d1_0) / dr
                    dir3 = m0 + rho2 * d1 + bview(phi_ratio(3, self._g(h)), x_s) * d2
                else:
                    dir3 = m0 + rho2 * (m2 - m0) / bview(r2, x_s)
                direction = torch.where(_mask(order == 3, x_s), dir3, direction)
        x_t = self._advance(x_s, c, direction)
        return StepOutput(x_t, self._eps_eff(x_s, c, direction), order, eps_s, evals)


@dataclass(frozen=True)
class DPMSolverMultistep(_DPMSolverBase):
    """Multistep DPM-Solver / DPM-Solver++(2M, 3M): one model call per step.

    A step of order k uses the ``k - 1`` most recent previous evaluations in ``history``
    (``Evaluation(x, t, eps)`` of the points the trajectory passed through, oldest first; their
    times may differ per sample). In a sampling loop the first steps warm up (order ``<= i + 1``)
    and, with ``lower_order_final`` and fewer than ``lower_order_final_steps`` steps, step ``i``
    of ``N`` uses order ``<= N - i`` (the last two steps orders 1 and <= 2). The threshold's
    default, 15, is diffusers' (``DPMSolverMultistepScheduler``); DPM-Solver's reference code
    uses 10 (``REFERENCE_LOWER_ORDER_FINAL_STEPS``). Why 15: on the analytic Gaussian problem
    (time_quadratic grid) DPM-Solver++(3M) at 10 steps without the lowering is less accurate
    than at 5 steps with it (see docs/sampling.md).

    The third-order step reproduces the reference code and diffusers (its second-difference
    weight is ``phi_3/phi_1`` on ``D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 m''/2``). ``exact_third_order``
    doubles that weight, which is the Taylor coefficient: only then is the 3M step third order in
    the limit of small steps (see ``docs/sampling.md``).
    """

    schedule: NoiseSchedule
    order: int = 2
    algorithm: str = "dpmsolver"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    exact_third_order: bool = False
    lower_order_final_steps: int = DIFFUSERS_LOWER_ORDER_FINAL_STEPS

    history_size = 2

    def __post_init__(self) -> None:
        self._check_common()
        if isinstance(self.lower_order_final_steps, bool) or int(self.lower_order_final_steps) < 1:
            raise SolverConfigError(f"lower_order_final_steps must be an int >= 1, got "
                                    f"{self.lower_order_final_steps!r}")

    def for_grid(self, grid: Grid, max_order: int) -> DPMSolverMultistep:
        super().for_grid(grid, max_order)
        if grid.steps < max_order:
            raise SolverConfigError(f"steps must be >= order for multistep {self.algorithm} (order "
                                    f"{max_order}), got steps={grid.steps}")
        return self

    def order_cap(self, step: int, steps: int) -> int:
        cap = min(3, step + 1)
        if self.lower_order_final and steps < self.lower_order_final_steps:
            cap = min(cap, steps - step)
        return cap

    def step(self, state: StepState) -> StepOutput:
        self.check_history(state)
        x_s, orders, history = state.x, state.orders, state.history
        sch = self.schedule
        eps_s, evals = state.start()
        c = step_coefficients(sch, state.s, state.t)
        h = c.h
        h = torch.where(torch.isfinite(h), h, torch.ones_like(h))  # rows forced to order 1
        order = orders.per_sample
        m0 = self._output(x_s, c.alpha_s, c.sigma_s, eps_s)
        direction = m0
        if orders.max >= 2:
            p1 = history[-1]
            t1 = p1.t.to(h)
            a1, sig1, lam1 = sch.marginals(t1)
            m1 = self._output(p1.x.to(x_s.dtype), a1, sig1, p1.eps)
            r0 = (c.lambda_s - lam1) / h
            d1_0 = (m0 - m1) / bview(r0, x_s)
            dir2 = m0 + self._second_order_weight(h, x_s) * d1_0
            direction = torch.where(_mask(order == 2, x_s), dir2, direction)
            if orders.max >= 3:
                p2 = history[-2]
                t2 = p2.t.to(h)
                a2, sig2, lam2 = sch.marginals(t2)
                m2 = self._output(p2.x.to(x_s.dtype), a2, sig2, p2.eps)
                r1 = (lam1 - lam2) / h
                d1_1 = (m1 - m2) / bview(r1, x_s)
                d1 = d1_0 + bview(r0 / (r0 + r1), x_s) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / bview(r0 + r1, x_s)
                w2 = 2.0 if self.exact_third_order else 1.0
                dir3 = (
                    m0
                    + bview(phi_ratio(2, self._g(h)), x_s) * d1
                    + w2 * bview(phi_ratio(3, self._g(h)), x_s) * d2
                )
                direction = torch.where(_mask(order == 3, x_s), dir3, direction)
        x_t = self._advance(x_s, c, direction)
        return StepOutput(x_t, self._eps_eff(x_s, c, direction), order, eps_s, evals)
