"""Exponential-integrator arithmetic shared by all solvers.

Every solver step here is a first-order step with an *effective* direction:

* noise form:  ``x_t = (alpha_t/alpha_s) x_s - sigma_t (e^h - 1) eps_eff``
* data form:   ``x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) x0_eff``,
  equivalently the noise form with ``eps_eff = (x_s - alpha_s x0_eff) / sigma_s``

with ``h = lambda_t - lambda_s``. Higher orders only change how the direction is combined from
model evaluations, with the coefficients ``phi_k(h) / phi_1(h)`` below.

``phi_k(h) = sum_j h^j / (j + k)!`` (so ``phi_1(h) = (e^h - 1)/h``); a series is used for small
``|h|`` where the closed forms cancel.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .schedules import NoiseSchedule

_SERIES_BELOW = 0.1
_SERIES_TERMS = 12


def phi(k: int, h: Tensor) -> Tensor:
    """``phi_k(h) = sum_{j>=0} h^j / (j+k)!`` for ``k >= 1`` (finite ``h``)."""
    small = h.abs() < _SERIES_BELOW
    hs = torch.where(small, h, torch.zeros_like(h))
    series = torch.zeros_like(h)
    for j in reversed(range(_SERIES_TERMS)):
        series = series * hs + 1.0 / math.factorial(j + k)
    hb = torch.where(small, torch.ones_like(h), h)
    closed = torch.expm1(hb) / hb
    for m in range(1, k):
        closed = (closed - 1.0 / math.factorial(m)) / hb
    return torch.where(small, series, closed)


def phi_ratio(k: int, h: Tensor) -> Tensor:
    """``phi_k(h) / phi_1(h)``: the weight of the k-th Taylor term in the effective direction.

    Tends to ``1/k!`` as ``h -> 0`` (``1/2`` for ``k = 2``, ``1/6`` for ``k = 3``).
    """
    return phi(k, h) / phi(1, h)


class StepCoefficients(NamedTuple):
    """Schedule values of a step ``s -> t``, each ``[B]`` in the coefficient dtype."""

    alpha_s: Tensor
    sigma_s: Tensor
    lambda_s: Tensor
    alpha_t: Tensor
    sigma_t: Tensor
    lambda_t: Tensor

    @property
    def h(self) -> Tensor:
        return self.lambda_t - self.lambda_s

    @property
    def noise_scale(self) -> Tensor:
        """``sigma_t (e^h - 1)``; at ``sigma_t = 0`` its limit ``alpha_t sigma_s / alpha_s``."""
        h = self.h
        finite = torch.isfinite(h)
        hb = torch.where(finite, h, torch.zeros_like(h))
        return torch.where(finite, self.sigma_t * torch.expm1(hb), self.alpha_t * self.sigma_s / self.alpha_s)


def step_coefficients(schedule: NoiseSchedule, s: Tensor, t: Tensor) -> StepCoefficients:
    return StepCoefficients(*schedule.marginals(s), *schedule.marginals(t))


def retarget(c: StepCoefficients, schedule: NoiseSchedule, t: Tensor) -> StepCoefficients:
    """The coefficients of the step from ``c``'s start to another end ``t``."""
    return StepCoefficients(c.alpha_s, c.sigma_s, c.lambda_s, *schedule.marginals(t))


def bview(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample ``[B]`` coefficient viewed to broadcast against ``like`` ``[B, ...]``, in its dtype."""
    return v.to(like.dtype).reshape(v.shape[0], *([1] * (like.ndim - 1)))


def noise_step(x_s: Tensor, c: StepCoefficients, eps: Tensor) -> Tensor:
    """First-order (DDIM / DPM-Solver-1) step in noise form."""
    return bview(c.alpha_t / c.alpha_s, x_s) * x_s - bview(c.noise_scale, x_s) * eps


def data_step(x_s: Tensor, c: StepCoefficients, x0: Tensor) -> Tensor:
    """First-order step in data form (DPM-Solver++-1); exact ``alpha_t x0`` at ``sigma_t = 0``."""
    h = c.h
    finite = torch.isfinite(h)
    ratio = torch.where(finite, c.sigma_t / c.sigma_s, torch.zeros_like(h))
    em1 = torch.where(finite, torch.expm1(-torch.where(finite, h, torch.zeros_like(h))), -torch.ones_like(h))
    return bview(ratio, x_s) * x_s - bview(c.alpha_t * em1, x_s) * x0


def x0_from_eps(x: Tensor, alpha: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    return (x - bview(sigma, x) * eps) / bview(alpha, x)


def eps_from_x0(x: Tensor, alpha: Tensor, sigma: Tensor, x0: Tensor) -> Tensor:
    return (x - bview(alpha, x) * x0) / bview(sigma, x)


def eps_eff_from_states(x_s: Tensor, x_t: Tensor, c: StepCoefficients) -> Tensor:
    """The definition ``eps_eff = ((alpha_t/alpha_s) x_s - x_t) / (sigma_t (e^h - 1))``."""
    return (bview(c.alpha_t / c.alpha_s, x_s) * x_s - x_t) / bview(c.noise_scale, x_s)
