"""Bad data is blamed on the data: a NaN or Inf in a batch names its shard and record.

Without this check a non-finite record reaches the loss, the step is skipped as a numerical
problem, and after ``max_nonfinite_steps`` training stops with advice about learning rates and
precision, while the fault is a record in a shard. :func:`check_finite_batch` runs on every
batch before the step (``TrajectoryDataModule.on_after_batch_transfer``) and costs one
``isfinite`` per floating-point field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from saq_lightning.errors import UserError

from .manifest import ShardInfo


class DataValueError(UserError, ValueError):
    """A batch holds NaN or Inf values: the records named are bad."""


def shard_of(traj: int, shards: Sequence[ShardInfo]) -> ShardInfo | None:
    """The shard whose trajectory range holds trajectory ``traj``."""
    return next((s for s in shards if s.first_traj <= traj < s.end_traj), None)


def check_finite_batch(batch: Mapping[str, Any], shards: Sequence[ShardInfo], root: str | Path,
                       fields: Sequence[str] = ("x_s", "eps_eff", "s", "t")) -> None:
    """Raise :class:`DataValueError` naming the first bad record (shard file, trajectory, step,
    field) if any floating-point field of ``batch`` is not finite."""
    for name in fields:
        value = batch.get(name)
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        finite = torch.isfinite(value)
        if bool(finite.all()):
            continue
        rows = (~finite).reshape(finite.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
        bad = rows[0]
        traj = int(batch["traj"][bad]) if "traj" in batch else -1
        step = int(batch["step"][bad]) if "step" in batch else -1
        shard = shard_of(traj, shards)
        where = str(Path(root) / shard.name) if shard is not None else f"{root} (shard unknown)"
        count = int((~finite[bad]).sum())
        raise DataValueError(
            f"{where}: record of trajectory {traj}, step {step} has {count} non-finite value(s) in "
            f"'{name}' ({len(rows)} bad record(s) in this batch); the shard's data is bad, not the "
            f"training: regenerate it (delete the shard and rerun generate)")
