"""Calibration points for PTQ from trajectory shards (``generate``'s output).

``load_calibration_points(folder, n, seed, pairs=True)`` draws ``n`` records (seeded, without
replacement; only records with ``paired = 1`` when pairs are asked for) from every shard of a
complete folder and returns them batched. The draw is a pure function of the manifest and the
seed, so every rank of a distributed PTQ run sees the same calibration set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .manifest import load_manifest
from .records import META_ENTRY, decode_sample
from .shard_reader import read_shard_samples
from .trajectory_pairs import check_pairs


@dataclass
class CalibrationPoints:
    """``n`` trajectory points (and their pairs), batched along dim 0."""

    x_s: torch.Tensor
    s: torch.Tensor
    x_mid: torch.Tensor | None
    s_mid: torch.Tensor | None
    cond: Any  # [n] class labels, [n, ...] tensors, or None
    traj: torch.Tensor
    step: torch.Tensor

    def __len__(self) -> int:
        return self.x_s.shape[0]

    def select(self, idx: torch.Tensor) -> CalibrationPoints:
        take = (lambda v: None if v is None else v[idx])
        return CalibrationPoints(self.x_s[idx], self.s[idx], take(self.x_mid), take(self.s_mid),
                                 take(self.cond), self.traj[idx], self.step[idx])


def load_calibration_points(folder: str | Path, num_samples: int, seed: int = 0,
                            pairs: bool = True) -> CalibrationPoints:
    """Draw ``num_samples`` points from the shards in ``folder`` (see the module docstring).

    Raises:
        PairsMissingError: ``pairs`` and the shards hold no mixed-order pairs.
        ValueError: fewer eligible records than ``num_samples``.
    """
    folder = Path(folder)
    manifest = load_manifest(folder)
    if pairs:
        check_pairs(manifest.fields, manifest.meta, f"{folder}/manifest.json")
    raw: list[list[dict[str, Any]]] = []
    eligible: list[tuple[int, int]] = []
    for si, info in enumerate(manifest.shards):
        samples = read_shard_samples(folder / info.name, info)
        raw.append(samples)
        for ri, sample in enumerate(samples):
            if not pairs or int(json.loads(sample[META_ENTRY]).get("paired", 0)) == 1:
                eligible.append((si, ri))
    if len(eligible) < num_samples:
        raise ValueError(f"{folder}: {len(eligible)} {'paired ' if pairs else ''}trajectory points, "
                         f"ptq.num_samples asks for {num_samples}; generate more trajectories "
                         f"(generation.trajectories_per_phase) or lower ptq.num_samples")
    gen = torch.Generator().manual_seed(int(seed))
    pick = sorted(torch.randperm(len(eligible), generator=gen)[:num_samples].tolist())
    recs = [decode_sample(raw[eligible[k][0]][eligible[k][1]], manifest.fields) for k in pick]
    cond: Any = None
    if "cond" in recs[0]:
        values = [r["cond"] for r in recs]
        cond = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    f32 = (lambda name: torch.stack([r[name].float() for r in recs]))
    return CalibrationPoints(
        x_s=f32("x_s"), s=torch.tensor([r["s"] for r in recs], dtype=torch.float64),
        x_mid=f32("x_mid") if pairs else None,
        s_mid=torch.tensor([r["s_mid"] for r in recs], dtype=torch.float64) if pairs else None,
        cond=cond, traj=torch.tensor([r["traj"] for r in recs]), step=torch.tensor([r["step"] for r in recs]),
    )
