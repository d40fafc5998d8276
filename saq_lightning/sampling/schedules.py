"""Noise schedules of VP diffusion, ``x_t = alpha_t x_0 + sigma_t eps``, in continuous time.

A *discrete* DDPM schedule (betas over ``N`` training timesteps) is given continuous-time access
the way DPM-Solver does it for discrete-time models: training index ``n`` sits at
``t_n = (n + 1) / N`` and ``log alpha_t`` is piecewise linear between the knots. We add the knot
``(t = 0, log alpha = 0)`` (the empty product ``alphabar_{-1} = 1``), which is where diffusers'
``set_alpha_to_one=True`` / ``final_sigmas_type="zero"`` end a trajectory: ``sigma_0 = 0`` and
``lambda_0 = +inf``.

The knots are computed once in float64 on the CPU (as CompVis/LDM compute their schedules); every
query is answered in the query's device and dtype (float32 at least), so a schedule works with
tensors on any device. ``schedule.to(device, dtype)`` moves the knots once, for callers that want
to avoid the small per-call copy (e.g. on an accelerator without float64).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

from .errors import ScheduleError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_BETA_ALIASES = {"cosine": "squaredcos_cap_v2", "squaredcos": "squaredcos_cap_v2"}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype schedule coefficients are computed in for tensors of ``dtype``: never below float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _as_time(t: Tensor | float) -> Tensor:
    if not isinstance(t, Tensor):
        # A Python number carries double precision; keep it.
        t = torch.as_tensor(t, dtype=torch.float64)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t.to(compute_dtype(t.dtype))


class NoiseSchedule(ABC):
    """A VP noise schedule in continuous time ``t in [0, 1]`` (``t = 1``: most noise)."""

    @abstractmethod
    def log_alpha(self, t: Tensor | float) -> Tensor:
        """``log alpha_t`` (elementwise)."""

    @abstractmethod
    def t_from_lambda(self, lam: Tensor | float) -> Tensor:
        """Inverse of :meth:`lambda_`: the time whose half log-SNR is ``lam`` (``+inf`` -> ``t = 0``)."""

    def alpha(self, t: Tensor | float) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor | float) -> Tensor:
        # sqrt(1 - alpha^2) without cancellation at small t.
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t: Tensor | float) -> Tensor:
        """Half log-SNR ``lambda_t = log(alpha_t / sigma_t)``; ``+inf`` where ``sigma_t = 0``."""
        la = self.log_alpha(t)
        return la - 0.5 * torch.log(-torch.expm1(2.0 * la))

    def marginals(self, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """``(alpha_t, sigma_t, lambda_t)`` from one ``log_alpha`` evaluation."""
        la = self.log_alpha(t)
        var = -torch.expm1(2.0 * la)
        return torch.exp(la), torch.sqrt(var), la - 0.5 * torch.log(var)

    @staticmethod
    def log_alpha_from_lambda(lam: Tensor) -> Tensor:
        """``log alpha`` of a VP schedule at half log-SNR ``lam``: ``-0.5 log(1 + e^{-2 lam})``."""
        return -0.5 * torch.nn.functional.softplus(-2.0 * lam)


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation on increasing knots ``xp``; linear extrapolation outside."""
    idx = torch.searchsorted(xp, x.detach().contiguous()).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    return y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def betas_from_config(
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 2e-2,
    num_train_timesteps: int = 1000,
) -> Tensor:
    """The DDPM betas (float64, CPU) of a diffusers/LDM ``beta_schedule``.

    ``linear``: evenly spaced betas (DDPM). ``scaled_linear``: evenly spaced ``sqrt(beta)``,
    squared (LDM / Stable Diffusion). ``squaredcos_cap_v2`` (alias ``cosine``): the improved-DDPM
    cosine schedule, ``alphabar(t) = cos^2((t + 0.008) / 1.008 * pi / 2)``, betas capped at 0.999.
    """
    name = _BETA_ALIASES.get(beta_schedule, beta_schedule)
    if name not in BETA_SCHEDULES:
        raise ScheduleError(
            f"beta_schedule must be one of {BETA_SCHEDULES} (or 'cosine'), got {beta_schedule!r}"
        )
    if int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 2:
        raise ScheduleError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
    n = int(num_train_timesteps)
    if name == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    elif name == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    else:
        def alphabar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1.0 - alphabar((i + 1) / n) / alphabar(i / n), 0.999) for i in range(n)],
            dtype=torch.float64,
        )
    return betas


class DiscreteSchedule(NoiseSchedule):
    """A DDPM schedule over ``N`` training timesteps with DPM-Solver's continuous-time access.

    Knots: ``t = 0`` with ``alpha = 1``, and ``t_n = (n + 1) / N`` with
    ``alpha^2 = alphas_cumprod[n]``; ``log alpha`` is linear in ``t`` between knots.
    """

    def __init__(self, betas: Tensor | None = None, *, alphas_cumprod: Tensor | None = None) -> None:
        if (betas is None) == (alphas_cumprod is None):
            raise ScheduleError("DiscreteSchedule needs exactly one of betas= or alphas_cumprod=")
        if betas is not None:
            betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
            if betas.ndim != 1 or betas.numel() < 2:
                raise ScheduleError(f"betas must be a 1-D tensor of >= 2 values, got shape {tuple(betas.shape)}")
            if not bool(((betas > 0) & (betas < 1)).all()):
                raise ScheduleError("betas must lie in (0, 1)")
            log_ac = torch.cumsum(torch.log1p(-betas), dim=0)
        else:
            ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
            if ac.ndim != 1 or ac.numel() < 2:
                raise ScheduleError(
                    f"alphas_cumprod must be a 1-D tensor of >= 2 values, got shape {tuple(ac.shape)}"
                )
            if not bool(((ac > 0) & (ac < 1)).all()) or not bool((ac[1:] < ac[:-1]).all()):
                raise ScheduleError("alphas_cumprod must lie in (0, 1) and be strictly decreasing")
            log_ac = torch.log(ac)
        n = log_ac.numel()
        self.num_train_timesteps: int = n
        self._t_knots = torch.arange(n + 1, dtype=torch.float64) / n
        self._log_alpha_knots = torch.cat([torch.zeros(1, dtype=torch.float64), 0.5 * log_ac])

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls,
        beta_schedule: str = "linear",
        beta_start: float = 1e-4,
        beta_end: float = 2e-2,
        num_train_timesteps: int = 1000,
        trained_betas: Tensor | list[float] | None = None,
        **_ignored: object,
    ) -> DiscreteSchedule:
        """From a diffusers-style scheduler config (unrelated keys such as ``steps_offset`` are ignored)."""
        if trained_betas is not None:
            return cls(torch.as_tensor(trained_betas, dtype=torch.float64))
        return cls(betas_from_config(beta_schedule, beta_start, beta_end, num_train_timesteps))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> DiscreteSchedule:
        """A copy whose knots live on ``device`` in ``dtype`` (default: keep float64)."""
        out = object.__new__(DiscreteSchedule)
        out.num_train_timesteps = self.num_train_timesteps
        out._t_knots = self._t_knots.to(dtype=dtype or self._t_knots.dtype).to(device=device)
        out._log_alpha_knots = self._log_alpha_knots.to(dtype=dtype or self._log_alpha_knots.dtype).to(device=device)
        return out

    # -- tables ---------------------------------------------------------------------------------
    @property
    def alphas_cumprod(self) -> Tensor:
        """``alphabar_n`` for training indices ``n = 0 .. N-1`` (float64 unless moved with ``to``)."""
        return torch.exp(2.0 * self._log_alpha_knots[1:])

    def _knots(self, like: Tensor) -> tuple[Tensor, Tensor]:
        def move(k: Tensor) -> Tensor:
            return k.to(dtype=like.dtype).to(device=like.device)

        return move(self._t_knots), move(self._log_alpha_knots)

    # -- continuous-time access ---------------------------------------------------------------------
    def log_alpha(self, t: Tensor | float) -> Tensor:
        t = _as_time(t)
        tk, lk = self._knots(t)
        return _interp(t, tk, lk)

    def t_from_lambda(self, lam: Tensor | float) -> Tensor:
        lam = _as_time(lam)
        tk, lk = self._knots(lam)
        la = self.log_alpha_from_lambda(lam)
        # log alpha is strictly decreasing in t: interpolate on the flipped (increasing) knots.
        return _interp(la, lk.flip(0), tk.flip(0))

    def model_timestep(self, t: Tensor | float) -> Tensor:
        """The model's timestep input for continuous ``t``: ``t * N - 1`` (training index scale).

        Results within a few units of rounding of an integer *are* that integer: in float32
        ``t = 511/1000`` gives ``509.99997`` otherwise, and integer timesteps (the knots of every
        ``leading`` grid) must reach the model, and its timestep buckets, exactly.
        """
        t = _as_time(t)
        ts = t * self.num_train_timesteps - 1.0
        tol = 8.0 * torch.finfo(ts.dtype).eps * self.num_train_timesteps
        near = ts.round()
        return torch.where((ts - near).abs() <= tol, near, ts)

    def t_from_model_timestep(self, timestep: Tensor | float) -> Tensor:
        """Inverse of :meth:`model_timestep`: ``(timestep + 1) / N``."""
        return (_as_time(timestep) + 1.0) / self.num_train_timesteps

    def __repr__(self) -> str:
        return f"DiscreteSchedule(num_train_timesteps={self.num_train_timesteps})"
