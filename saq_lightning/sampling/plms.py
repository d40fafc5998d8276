"""PLMS: PNDM's pseudo linear multistep method (Liu et al. 2022), as used for Stable Diffusion.

Each step is a DDIM step (PNDM's "transfer" is algebraically DDIM's update) with an
Adams-Bashforth combination of noise predictions at the previous grid points:

====== ===========================================
order  eps_eff
====== ===========================================
1      e0                                  (DDIM)
2      (3 e0 - e1) / 2
3      (23 e0 - 16 e1 + 5 e2) / 12
4      (55 e0 - 59 e1 + 37 e2 - 9 e3) / 24
====== ===========================================

(``e0`` at the current point, ``e1`` one grid point back, ...). The coefficients assume equal
steps, as PNDM does. The first step has no history: for order >= 2 it is PNDM's pseudo
improved Euler step, ``eps_eff = (e0 + eps(x~_t, t)) / 2`` with ``x~_t`` the DDIM prediction
(two model calls; diffusers' ``PNDMScheduler(skip_prk_steps=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .exponential import noise_step, step_coefficients
from .schedules import NoiseSchedule
from .solver import Solver, StepOutput, StepState

_ADAMS_BASHFORTH = {
    1: (1.0,),
    2: (3.0 / 2.0, -1.0 / 2.0),
    3: (23.0 / 12.0, -16.0 / 12.0, 5.0 / 12.0),
    4: (55.0 / 24.0, -59.0 / 24.0, 37.0 / 24.0, -9.0 / 24.0),
}


@dataclass(frozen=True)
class PLMS(Solver):
    """Pseudo linear multistep, default order 4 (history: the previous 3 grid evaluations)."""

    schedule: NoiseSchedule
    order: int = 4

    allowed_orders = (1, 2, 3, 4)
    history_size = 3

    def __post_init__(self) -> None:
        self.check_order()

    def order_cap(self, step: int, steps: int) -> int:
        # Step 0 of order >= 2 is the two-evaluation pseudo improved Euler step (order 2).
        return max(step + 1, 2)

    def history_needed(self, order: int) -> int:
        return 0 if order <= 2 else order - 1

    def step(self, state: StepState) -> StepOutput:
        self.check_history(state)
        x_s, orders, history = state.x, state.orders, state.history
        b = x_s.shape[0]
        eps_s, evals = state.start()
        c = step_coefficients(self.schedule, state.s, state.t)
        eps_eff = eps_s
        if not history:
            if orders.max >= 2:
                x_pred = noise_step(x_s, c, eps_s)
                e_next, ev = state.evaluate_rows(x_pred, state.t, orders.rows_at_least(2))
                evals += (ev,)
                mask = orders.where_at_least(2).reshape(b, *([1] * (x_s.ndim - 1)))
                eps_eff = torch.where(mask, 0.5 * (eps_s + e_next), eps_s)
            used = orders.per_sample.clamp(max=2)
        else:
            past = [h.eps.to(x_s.dtype) for h in reversed(history)]  # e1, e2, ...
            for k in range(2, orders.max + 1):
                coef = _ADAMS_BASHFORTH[k]
                combo = coef[0] * eps_s
                for j in range(1, k):
                    combo = combo + coef[j] * past[j - 1]
                mask = (orders.per_sample == k).reshape(b, *([1] * (x_s.ndim - 1)))
                eps_eff = torch.where(mask, combo, eps_eff)
            used = orders.per_sample
        x_t = noise_step(x_s, c, eps_eff)
        return StepOutput(x_t, eps_eff, used, eps_s, evals)
