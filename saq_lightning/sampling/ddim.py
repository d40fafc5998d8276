"""DDIM (Song et al. 2021). With ``eta = 0`` it is exactly DPM-Solver-1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import SolverConfigError
from .exponential import bview, eps_eff_from_states, noise_step, step_coefficients, x0_from_eps
from .predictor import Evaluation, NoisePredictor, evaluate
from .schedules import NoiseSchedule
from .solver import Orders, Solver, StepOutput


@dataclass(frozen=True)
class DDIM(Solver):
    """DDIM; ``eta > 0`` adds fresh noise of variance ``eta^2 (sigma_t/sigma_s)^2 (1 - alpha_s^2/alpha_t^2)``.

    For ``eta > 0``, ``eps_eff`` is defined from the realised ``x_t`` (it includes the noise).
    Noise is drawn with ``torch.randn(x.shape, generator=generator)`` in ``x``'s dtype and device,
    the same draw diffusers' ``DDIMScheduler.step`` makes.
    """

    schedule: NoiseSchedule
    eta: float = 0.0
    order: int = 1

    allowed_orders = (1,)

    def __post_init__(self) -> None:
        self.check_order()
        if not self.eta >= 0.0:
            raise SolverConfigError(f"eta must be >= 0 for DDIM, got {self.eta!r}")

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
        evals: tuple[Evaluation, ...] = ()
        if eps_s is None:
            eps_s = evaluate(model, x_s, s, cond)
            evals = (Evaluation(x_s, s, eps_s),)
        c = step_coefficients(self.schedule, s, t)
        if self.eta == 0.0:
            x_t = noise_step(x_s, c, eps_s)
            eps_eff = eps_s
        else:
            var = self.eta**2 * (c.sigma_t / c.sigma_s) ** 2 * (1.0 - (c.alpha_s / c.alpha_t) ** 2)
            noise = torch.randn(x_s.shape, generator=generator, dtype=x_s.dtype, device=x_s.device)
            x0 = x0_from_eps(x_s, c.alpha_s, c.sigma_s, eps_s)
            x_t = (
                bview(c.alpha_t, x_s) * x0
                + bview(torch.sqrt((c.sigma_t**2 - var).clamp(min=0.0)), x_s) * eps_s
                + bview(torch.sqrt(var), x_s) * noise
            )
            eps_eff = eps_eff_from_states(x_s, x_t, c)
        return StepOutput(x_t, eps_eff, orders.per_sample, eps_s, evals)
