"""Gaussian data: a diffusion problem whose exact noise predictor and ODE solution are closed form.

For ``x_0 ~ N(mean, diag(std^2))`` the marginal at ``t`` is ``N(alpha_t mean, v_t)`` with
``v_t = alpha_t^2 std^2 + sigma_t^2``; the exact noise predictor is
``eps(x, t) = sigma_t (x - alpha_t mean) / v_t`` and the probability-flow ODE moves every
coordinate affinely, ``x_t = alpha_t mean + sqrt(v_t) z`` with ``z`` constant. Used to measure
solver error and convergence order (tests, ``benchmarks/samplers.py``). With ``std = 1`` eps is
constant along trajectories and every solver is exact, so use other values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from .exponential import bview
from .schedules import NoiseSchedule


@dataclass(frozen=True)
class GaussianData:
    """Data ``N(mean, diag(std^2))`` with per-feature ``mean``/``std`` of shape ``x.shape[1:]``."""

    schedule: NoiseSchedule
    mean: Tensor
    std: Tensor

    def _var(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        alpha, sigma, _ = self.schedule.marginals(t)
        a, s = bview(alpha, like), bview(sigma, like)
        std = self.std.to(like)
        return a, s, a * a * std * std + s * s

    def eps(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The exact noise predictor (a ``NoisePredictor``)."""
        a, s, v = self._var(t, x)
        return s * (x - a * self.mean.to(x)) / v

    __call__ = eps

    def flow(self, x_s: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """The exact probability-flow ODE solution at ``t`` from ``x_s`` at ``s`` (``[B]`` times)."""
        a_s, _, v_s = self._var(s, x_s)
        a_t, _, v_t = self._var(t, x_s)
        mean = self.mean.to(x_s)
        return a_t * mean + (v_t / v_s).sqrt() * (x_s - a_s * mean)
