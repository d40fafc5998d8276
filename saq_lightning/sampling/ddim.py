"""DDIM (Song et al. 2021). With ``eta = 0`` it is exactly DPM-Solver-1."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SolverConfigError
from .exponential import bview, eps_eff_from_states, noise_step, step_coefficients, x0_from_eps
from .schedules import NoiseSchedule
from .solver import Solver, StepOutput, StepState


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

    def step(self, state: StepState) -> StepOutput:
        x_s = state.x
        eps_s, evals = state.start()
        c = step_coefficients(self.schedule, state.s, state.t)
        if self.eta == 0.0:
            x_t = noise_step(x_s, c, eps_s)
            eps_eff = eps_s
        else:
            var = self.eta**2 * (c.sigma_t / c.sigma_s) ** 2 * (1.0 - (c.alpha_s / c.alpha_t) ** 2)
            noise = torch.randn(x_s.shape, generator=state.generator, dtype=x_s.dtype, device=x_s.device)
            x0 = x0_from_eps(x_s, c.alpha_s, c.sigma_s, eps_s)
            x_t = (
                bview(c.alpha_t, x_s) * x0
                + bview(torch.sqrt((c.sigma_t**2 - var).clamp(min=0.0)), x_s) * eps_s
                + bview(torch.sqrt(var), x_s) * noise
            )
            eps_eff = eps_eff_from_states(x_s, x_t, c)
        return StepOutput(x_t, eps_eff, state.orders.per_sample, eps_s, evals)
