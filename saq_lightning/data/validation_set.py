"""The held-out validation points: ``<shards>/val``, written by ``generate`` when
``generation.validation_trajectories_per_phase`` > 0 (see ``alignment/validation.py``).

The set is small (a few trajectories per phase), so it is read once into memory and served as
fixed batches in file order: every validation pass sees exactly the same points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .manifest import MANIFEST_NAME, load_manifest
from .records import collate_records, decode_sample
from .shard_reader import read_shard_samples

VALIDATION_FOLDER = "val"


def validation_folder(shards: str | Path | None) -> Path | None:
    """``<shards>/val`` if it holds a manifest, else ``None`` (no validation set)."""
    if shards is None:
        return None
    folder = Path(shards) / VALIDATION_FOLDER
    return folder if (folder / MANIFEST_NAME).is_file() else None


def validation_batches(folder: str | Path, batch_size: int, float_dtype: torch.dtype = torch.float32,
                       time_dtype: torch.dtype = torch.float32) -> list[dict[str, Any]]:
    """Every record of the validation folder (verified against its manifest), in fixed batches."""
    folder = Path(folder)
    manifest = load_manifest(folder)
    records = [decode_sample(raw, manifest.fields)
               for shard in manifest.shards for raw in read_shard_samples(folder / shard.name, shard)]
    return [collate_records(records[i:i + batch_size], float_dtype, time_dtype)
            for i in range(0, len(records), batch_size)]
