"""``IterableDataset`` of whole batches of trajectory records read from WebDataset shards.

Use it with ``DataLoader(dataset, batch_size=None, persistent_workers=False)``. An iterator
yields the batches ``start .. end of that epoch`` (see :mod:`.batch_plan`); the owner moves
``start`` forward as batches are consumed (the data module does this), so each epoch's fresh
iterator, and a resumed run, continue where the last one stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .batch_plan import BatchPlan, Selector, selector_key, worker_batch_indices
from .manifest import ShardInfo
from .phase_stream import PhaseStream, assign_shards
from .records import collate_records, decode_sample
from .shard_reader import Verify


def current_worker(expected_workers: int) -> tuple[int, int]:
    """``(worker id, number of workers)``; checks the DataLoader has the expected worker count."""
    info = get_worker_info()
    worker, num = (info.id, info.num_workers) if info is not None else (0, 1)
    if num != max(1, expected_workers):
        raise RuntimeError(f"dataset built for {expected_workers} DataLoader workers runs under "
                           f"{num}: build it with the DataLoader's num_workers")
    return worker, num


class TrajectoryBatches(IterableDataset):
    """Batches (dicts of stacked tensors) of trajectory records; one rank's share."""

    def __init__(
        self,
        root: str | Path,
        shards: Sequence[ShardInfo],
        fields: dict[str, dict[str, Any]],
        plan: BatchPlan,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        shuffle_shards: int = 4,
        verify: Verify = "sha256",
        float_dtype: torch.dtype = torch.float32,
        time_dtype: torch.dtype = torch.float32,
        start: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.shards = list(shards)
        self.fields = fields
        self.plan = plan
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_workers = int(num_workers)
        self.shuffle_shards = int(shuffle_shards)
        self.verify = verify
        self.float_dtype, self.time_dtype = float_dtype, time_dtype
        #: Global index of the next batch to yield; moved forward by the owner.
        self.start = int(start)

    def __len__(self) -> int:
        return self.plan.batches_per_epoch

    def _stream(self, selector: Selector, epoch: int, vworker: int, workers: int) -> PhaseStream:
        shards = assign_shards(self.shards, selector, seed=self.seed, epoch=epoch, rank=self.rank,
                               world_size=self.world_size, worker=vworker, num_workers=workers)
        key = [self.seed, epoch, *selector_key(selector), self.rank, vworker]
        return PhaseStream(self.root, shards, selector, key, self.shuffle_shards, self.verify)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = current_worker(self.num_workers)
        start, per_epoch = self.start, self.plan.batches_per_epoch
        indices = worker_batch_indices(start, per_epoch, worker, workers)
        if not indices:
            return
        epoch, vworker = start // per_epoch, indices[0] % workers
        streams: dict[Selector, PhaseStream] = {}

        def stream(selector: Selector) -> PhaseStream:
            if selector not in streams:
                streams[selector] = self._stream(selector, epoch, vworker, workers)
            return streams[selector]

        # Skip what this virtual worker yielded earlier in the epoch (arithmetic, no reading).
        for g in range(epoch * per_epoch + vworker, indices[0], workers):
            stream(self.plan.selector(g)).skip(self.batch_size)
        for g in indices:
            raw = stream(self.plan.selector(g)).take(self.batch_size)
            batch = collate_records([decode_sample(r, self.fields) for r in raw],
                                    self.float_dtype, self.time_dtype)
            batch["batch_index"] = g
            batch["epoch"] = epoch
            phase = self.plan.mixstep_phase(g)
            if phase is not None:
                batch["mixstep_phase"] = phase
            yield batch
