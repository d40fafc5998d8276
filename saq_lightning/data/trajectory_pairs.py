"""Mixed-order calibration pairs (SA-PTQ): a trajectory point and its second-order intermediate.

For every step ``j`` of the teacher's DPM-Solver-2 trajectory from one ``x_T``, the record of the
point ``x_{t_j}`` (the state where the step's first-order evaluation is made: ``x_s``, time ``s``)
gets the step's intermediate point ``x_{s_j}`` (``x_mid``, time ``s_mid``: where the second-order
evaluation is made). Both come from the same ``x_T`` and the same rollout, by construction.

Fields added to every record::

    x_mid    Tensor (C, H, W)   the intermediate point (equal to x_s where there is none)
    s_mid    float              its continuous time (equal to s where there is none)
    paired   int 0/1            1 where the step evaluated an intermediate point

A step without an intermediate point (order 1, e.g. a final step to t = 0) has ``paired = 0``.
"""

from __future__ import annotations

from typing import Any

import torch

from saq_lightning.errors import UserError

from ..sampling.sample import Trajectory

PAIR_FIELDS = ("x_mid", "s_mid", "paired")
PAIRS_META = "dpm2_intermediate"


class PairsMissingError(UserError, ValueError):
    """Calibration shards without the paired points ``mixed_order`` reconstruction needs."""


def step_pairs(trajectory: Trajectory) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x_mid [N, B, ...]``, ``s_mid [N, B]``, ``paired [N, B]`` of a trajectory with evaluations."""
    if not trajectory.evaluations:
        raise ValueError("the trajectory holds no evaluation record: sample it with return_trajectory=True "
                         "and keep its evaluations")
    states, times = trajectory.states, trajectory.times
    n, b = trajectory.orders.shape
    x_mid = states[:-1].clone()
    s_mid = times[:-1, None].expand(n, b).clone()
    paired = torch.zeros(n, b, dtype=torch.long)
    by_step: dict[int, list[Any]] = {}
    for ev in trajectory.evaluations:
        by_step.setdefault(int(ev.step), []).append(ev)
    for j in range(n):
        evs = by_step.get(j, [])
        if len(evs) < 2:
            continue
        ev = evs[1]  # the first evaluation is at x_s itself, the second at the intermediate point
        rows = torch.arange(b, device=ev.x.device) if ev.index is None else ev.index
        x_mid[j, rows] = ev.x.to(x_mid.dtype)
        s_mid[j, rows] = ev.t.to(s_mid.dtype).expand(rows.shape[0])
        paired[j, rows.cpu()] = 1
    return x_mid, s_mid, paired


def add_pairs(records: list[dict[str, Any]], trajectory: Trajectory) -> list[dict[str, Any]]:
    """Add the pair fields to the records of :func:`trajectory_records` (same trajectory)."""
    x_mid, s_mid, paired = step_pairs(trajectory)
    x_mid, s_mid = x_mid.detach().cpu(), s_mid.detach().cpu().double()
    n, b = paired.shape
    if len(records) != n * b:
        raise ValueError(f"{len(records)} records for a trajectory of {n} steps x {b} samples")
    for k, rec in enumerate(records):  # trajectory-major: record k is sample k // n, step k % n
        bi, i = divmod(k, n)
        rec["x_mid"] = x_mid[i, bi]
        rec["s_mid"] = float(s_mid[i, bi])
        rec["paired"] = int(paired[i, bi])
    return records


def check_pairs(fields: dict[str, Any], meta: dict[str, Any], source: str) -> None:
    """Raise :class:`PairsMissingError` unless the shards hold the pair fields."""
    missing = [f for f in PAIR_FIELDS if f not in fields]
    if missing or meta.get("pairs") != PAIRS_META:
        raise PairsMissingError(
            f"{source}: the calibration shards hold no mixed-order pairs (fields {missing or list(PAIR_FIELDS)} "
            f"missing, meta 'pairs' = {meta.get('pairs')!r}, expected {PAIRS_META!r}); regenerate them "
            f"with `generate` and model.init_args.generation.store_pairs: true (teacher order 2), or use "
            f"ptq.objective: same_input")
