"""A deterministic stand-in for a teacher rollout: fake trajectory records for tests and smoke runs.

It has the shape of the real thing (one record per step of an N-step grid, phases, class labels,
``eps_eff`` targets) and is a pure function of ``(seed, trajectory index)``, which is all that the
shard writer and the data module rely on. It computes nothing meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class SyntheticRollout:
    """``rollout_fn`` for :func:`~saq_lightning.data.shard_writer.write_trajectory_shards`.

    Trajectory ``i`` belongs to phase ``(i // phase_block) % len(steps_per_phase)`` and has
    ``steps_per_phase[phase]`` records. With ``phase_block`` equal to the writer's
    ``trajectories_per_shard`` every shard holds one phase only (the layout that reads cheapest).
    """

    seed: int = 0
    image_shape: tuple[int, ...] = (1, 8, 8)
    steps_per_phase: tuple[int, ...] = (4, 2)
    phase_block: int = 1
    num_classes: int = 10
    order: int = 2
    with_eps_eff: bool = True

    def phase_of(self, traj: int) -> int:
        return (traj // self.phase_block) % len(self.steps_per_phase)

    def trajectory(self, traj: int) -> list[dict[str, Any]]:
        rng_seed = int(np.random.SeedSequence([self.seed, traj]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(rng_seed)
        phase = self.phase_of(traj)
        steps = self.steps_per_phase[phase]
        x = torch.randn(self.image_shape, generator=gen)
        records = []
        for step in range(steps):
            s, t = 1.0 - step / steps, max(1.0 - (step + 1) / steps, 1e-3)
            record = {
                "x_s": x.clone(),
                "s": s,
                "t": t,
                "order": self.order,
                "steps": steps,
                "phase": phase,
                "cond": traj % self.num_classes,
                "traj": traj,
                "step": step,
            }
            if self.with_eps_eff:
                record["eps_eff"] = torch.randn(self.image_shape, generator=gen)
            records.append(record)
            x = 0.9 * x + 0.1 * torch.randn(self.image_shape, generator=gen)
        return records

    def __call__(self, traj_indices: list[int]) -> list[dict[str, Any]]:
        return [r for traj in traj_indices for r in self.trajectory(traj)]
