"""Shared pieces of the sampler tests: the analytic Gaussian problem and a call-recording model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saq_lightning.sampling import DiscreteSchedule, GaussianData

LINEAR = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 2e-2, "num_train_timesteps": 1000}
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}


def gaussian_problem(dim: int = 6, batch: int = 8, seed: int = 0) -> tuple[DiscreteSchedule, GaussianData, Tensor]:
    """Linear-beta schedule, Gaussian data with std != 1 per feature, and float64 start noise."""
    sch = DiscreteSchedule.from_config(**LINEAR)
    data = GaussianData(
        sch,
        mean=torch.linspace(-1.0, 1.0, dim, dtype=torch.float64),
        std=torch.linspace(0.3, 2.0, dim, dtype=torch.float64),
    )
    g = torch.Generator().manual_seed(seed)
    return sch, data, torch.randn(batch, dim, generator=g, dtype=torch.float64)


def exact_end(data: GaussianData, x_T: Tensor, grid: Tensor) -> Tensor:
    b = x_T.shape[0]
    return data.flow(x_T, grid[0].expand(b), grid[-1].expand(b))


def rms(x: Tensor) -> float:
    return x.pow(2).mean().sqrt().item()


def loglog_slope(steps: list[int], errors: list[float]) -> float:
    """Least-squares slope of ``-log(error)`` against ``log(steps)``: the observed convergence order."""
    xs = [math.log(n) for n in steps]
    ys = [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


@dataclass
class RecordingModel:
    """Wraps a noise predictor and records the (batch size, times) of every call."""

    inner: Any
    calls: list[tuple[int, Tensor]] = field(default_factory=list)

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        self.calls.append((x.shape[0], t.detach().clone()))
        return self.inner(x, t, cond)


def lone_step_options(name: str, spacing: str | None = None) -> dict[str, Any]:
    """Options that tell a singlestep DPM-Solver where intermediate points of a lone step go (no
    grid to read a spacing from): ``spacing`` when given, else the lambda-fractions 1/2, 1/3, 2/3."""
    if name not in ("dpm1", "dpm2", "dpm3", "dpm++1", "dpm++2s", "dpm++3s"):
        return {}
    return {"spacing": spacing} if spacing else {"intermediate": "lambda"}
