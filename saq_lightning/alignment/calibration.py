"""Calibration data for the student: real teacher-trajectory states at every timestep bucket.

The teacher is rolled out over the student's finest trained grid (``spacing``, ``steps``: every
state is a trained grid point, so every bucket of nested grids gets its own data), or, for a
student not bound to grids, a time-uniform grid of one step per activation bucket (grid state
``i`` falls into bucket ``n_buckets - 1 - i``); ``settings.steps`` overrides the step count. Every state
becomes a student call ``{"sample", "timestep", <condition argument>}``; with classifier-free
guidance the null-condition copy is added too, since the guided student sees both.

Intermediate points with buckets of their own (a singlestep student's, or SA-PTQ's quantized side;
``BucketMap.own_intermediate_points``) get states too: the teacher's first-order step from the
nearest noisier grid state to the point, which on the rolled-out grid *is* DPM-Solver-2's
intermediate point (elsewhere, a state of the right noise level from a nearby one). Without them
those buckets would be filled from a neighbouring grid point's data, a range they never see.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from saq_lightning.sampling import make_solver, sample, time_grid
from saq_lightning.sampling.exponential import noise_step, step_coefficients
from saq_lightning.sampling.predictor import evaluate

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
    intermediate: Sequence[float] = (),
) -> Iterator[dict[str, Any]]:
    """Student call arguments over teacher trajectories (generated lazily, chunk by chunk);
    ``intermediate``: model timesteps of intermediate points to add states at."""
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
        traj = sample(flow.predictor(), x_T, grid, solver, cond=cond, return_trajectory=True).trajectory
        points = traj.points()
        x_mid, t_mid = intermediate_states(flow, traj.states, traj.times, intermediate, cond)
        x = torch.cat([points.x_s, x_mid])
        ts = flow.schedule.model_timestep(torch.cat([points.s, t_mid.to(points.s)])).to(device, torch.float32)
        rows_cond = None
        if cond is not None:
            rows_cond = cond.repeat(x.shape[0] // cond.shape[0], *([1] * (cond.ndim - 1)))
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


@torch.no_grad()
def intermediate_states(flow: TeacherFlow, states: Tensor, times: Tensor, intermediate: Sequence[float],
                        cond: Any) -> tuple[Tensor, Tensor]:
    """States ``[K * B, ...]`` (point-major) at the intermediate model timesteps that a grid
    state precedes, and their times ``[K * B]``: the teacher's first-order step from the nearest
    noisier evaluated grid state ``states[j]`` (``times[j] > t``) to each point."""
    schedule, b, teacher = flow.schedule, states.shape[1], flow.predictor()
    xs, ts, eps = [], [], {}
    for u in intermediate:
        t_u = schedule.t_from_model_timestep(torch.tensor(float(u), dtype=times.dtype, device=times.device))
        noisier = torch.nonzero(times[:-1] > t_u).flatten()
        if noisier.numel() == 0:
            continue
        j = int(noisier[-1])
        s = times[j].expand(b)
        if j not in eps:
            eps[j] = evaluate(teacher, states[j], s, cond)
        xs.append(noise_step(states[j], step_coefficients(schedule, s, t_u.expand(b)), eps[j]))
        ts.append(t_u.expand(b))
    if not xs:
        return states[:0].flatten(0, 1), times[:0]
    return torch.cat(xs), torch.cat(ts)
