"""Turn a sampled batch of teacher trajectories into shard records (the glue for ``generate``).

``sampling.sample(..., return_trajectory=True)`` gives states ``[N + 1, B, ...]``, times
``[N + 1]``, per-sample orders ``[N, B]`` and ``eps_eff`` ``[N, B, ...]``; one record per
(sample, step), trajectory-major, in the schema of :mod:`saq_lightning.data.records`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..sampling.sample import Trajectory


def trajectory_records(
    trajectory: Trajectory,
    traj_indices: Sequence[int],
    *,
    phase: int,
    cond: torch.Tensor | Sequence[int] | None = None,
    history: int = 0,
) -> list[dict[str, Any]]:
    """Records of every step of every sample of ``trajectory``.

    Args:
        trajectory: a batch of ``B`` trajectories on one ``N``-step grid.
        traj_indices: the global trajectory index of each of the ``B`` samples.
        phase: mixstep phase index the grid belongs to.
        cond: per-sample class labels (ints / integer tensor ``[B]``) or conditioning tensors
            ``[B, ...]``; ``None`` for unconditional models.
        history: multistep solvers: also store ``x_hist``, the ``history`` previous states of
            every point, most recent first (before the start: ``x_T`` again).
    """
    states = trajectory.states.detach().cpu()
    eps = trajectory.eps_eff.detach().cpu()
    orders = trajectory.orders.detach().cpu()
    times = trajectory.times.detach().cpu().double().tolist()
    steps, batch = orders.shape
    if len(traj_indices) != batch:
        raise ValueError(f"{len(traj_indices)} trajectory indices for a batch of {batch}")
    if isinstance(cond, torch.Tensor):
        cond = cond.detach().cpu()
        per_sample = cond.tolist() if cond.ndim == 1 and not cond.is_floating_point() else cond
    else:
        per_sample = cond
    if per_sample is not None and len(per_sample) != batch:
        raise ValueError(f"{len(per_sample)} conditions for a batch of {batch}")
    records = []
    for b, traj in enumerate(traj_indices):
        for i in range(steps):
            record: dict[str, Any] = {
                "x_s": states[i, b],
                "eps_eff": eps[i, b],
                "s": times[i],
                "t": times[i + 1],
                "order": int(orders[i, b]),
                "steps": steps,
                "phase": int(phase),
                "traj": int(traj),
                "step": i,
            }
            if history:
                back = [max(i - 1 - j, 0) for j in range(history)]
                record["x_hist"] = states[back, b]
            if per_sample is not None:
                record["cond"] = per_sample[b]
            records.append(record)
    return records
