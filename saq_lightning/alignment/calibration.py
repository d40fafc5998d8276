"""Calibration data for the student: real teacher-trajectory states at every timestep bucket.

The teacher is rolled out over the student's finest trained grid (``spacing``, ``steps``: every
state is a trained grid point, so every bucket of nested grids gets its own data), or, for a
student not bound to grids, a time-uniform grid of one step per activation bucket (grid state
``i`` falls into bucket ``n_buckets - 1 - i``); ``settings.steps`` overrides the step count. Every state
becomes a student call ``{"sample", "timestep", <condition argument>}``; with classifier-free
guidance the null-condition copy is added too, since the guided student sees both.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from saq_lightning.sampling import make_solver, sample, time_grid

from .conditions import ConditionSource, noise_for
from .settings import CalibrationSettings
from .teacher_flow import TeacherFlow


@torch.no_grad()
def calibration_batches(
    flow: TeacherFlow,
    settings: CalibrationSettings,
    conditions: ConditionSource,
    n_buckets: int,
    device: torch.device | str,
    dtype: torch.dtype = torch.float32,
    *,
    spacing: str | None = None,
    steps: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Student call arguments over teacher trajectories (generated lazily, chunk by chunk)."""
    model = flow.model
    steps = settings.steps or (steps if spacing is not None else None) or n_buckets
    grid = time_grid(flow.schedule, steps, spacing or "time_uniform")
    solver = make_solver(settings.solver, flow.schedule)
    guided = flow.settings.guidance_scale != 1.0 and model.conditioner is not None
    chunk = max(1, min(settings.num_samples, settings.batch_size))
    for lo in range(0, settings.num_samples, chunk):
        idx = list(range(lo, min(lo + chunk, settings.num_samples)))
        x_T = noise_for(settings.seed, idx, model.sample_shape, device, dtype)
        cond = conditions(idx, device=device)
        points = sample(flow.predictor(), x_T, grid, solver, cond=cond, return_trajectory=True).trajectory.points()
        x, ts = points.x_s, flow.schedule.model_timestep(points.s).to(device, torch.float32)
        rows_cond = None
        if cond is not None:
            rows_cond = cond.repeat(steps, *([1] * (cond.ndim - 1)))
        if guided:
            null = model.null_cond(rows_cond.shape[0], device=rows_cond.device)
            rows_cond = torch.cat([rows_cond, null.to(rows_cond.dtype)])
            x, ts = torch.cat([x, x]), torch.cat([ts, ts])
        order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(settings.seed + lo))
        order = order.to(x.device)
        for part in order.split(settings.batch_size):
            call: dict[str, Any] = {"sample": x[part], "timestep": ts[part]}
            if rows_cond is not None:
                encoded = model.conditioner(rows_cond[part.to(rows_cond.device)])
                call[model.conditioner.unet_argument] = encoded.to(dtype) if encoded.is_floating_point() else encoded
            yield call
