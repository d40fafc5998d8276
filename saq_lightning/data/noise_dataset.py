"""On-the-fly mode: batches of initial noise ``x_T`` and class labels, for rolling out a teacher
inside the training step instead of reading trajectories from disk.

Everything is a pure function of (seed, global sample index): sample ``n`` has noise drawn from
its own generator and a class label from a class-balanced sequence (every block of
``num_classes`` consecutive samples holds each class once, in a seeded order): the training
stream of ``saq_lightning/seeding.py``. Batch ``g`` of
rank ``r`` holds samples ``(g * world_size + r) * batch_size + i``, so contents do not depend on
the worker layout and resuming at batch ``g`` is exact.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import IterableDataset

from saq_lightning.seeding import training_labels, training_noise

from .batch_plan import BatchPlan, worker_batch_indices
from .trajectory_dataset import current_worker


class NoiseBatches(IterableDataset):
    """Batches ``{"x_T", "cond", "index", phase fields..., "batch_index", "epoch"}``."""

    def __init__(
        self,
        plan: BatchPlan,
        batch_size: int,
        image_shape: Sequence[int],
        *,
        num_classes: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        float_dtype: torch.dtype = torch.float32,
        start: int = 0,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.batch_size = int(batch_size)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes = num_classes
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_workers = int(num_workers)
        self.float_dtype = float_dtype
        self.start = int(start)

    def __len__(self) -> int:
        return self.plan.batches_per_epoch

    def batch(self, g: int) -> dict[str, Any]:
        """Batch with global index ``g`` (pure)."""
        first = (g * self.world_size + self.rank) * self.batch_size
        indices = list(range(first, first + self.batch_size))
        out: dict[str, Any] = {
            "x_T": training_noise(self.seed, indices, self.image_shape).to(self.float_dtype),
            "index": torch.tensor(indices, dtype=torch.long),
        }
        if self.num_classes is not None:
            out["cond"] = training_labels(self.seed, indices, self.num_classes)
        phase = self.plan.mixstep_phase(g)
        if phase is not None:
            spec = self.plan.schedule.phases[phase]
            def full(value: int) -> torch.Tensor:
                return torch.full((self.batch_size,), int(value), dtype=torch.long)

            out["phase"] = full(phase)
            out["student_steps"] = full(spec.student_steps)
            out["student_order"] = full(spec.student_order)
            out["teacher_steps"] = full(spec.teacher_steps)
            out["teacher_order"] = full(spec.teacher_order)
            out["mixstep_phase"] = phase
        out["batch_index"] = g
        out["epoch"] = self.plan.epoch(g)
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, workers = current_worker(self.num_workers)
        for g in worker_batch_indices(self.start, self.plan.batches_per_epoch, worker, workers):
            yield self.batch(g)
