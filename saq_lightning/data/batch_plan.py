"""Which global batch indices a DataLoader worker yields, and what each batch selects.

Every batch has a *global index* ``g`` counted from the start of training across epochs; epoch
``g // batches_per_epoch``. Batch contents are a deterministic function of ``g`` (and of seed,
rank and the worker layout), so a run resumed at ``g`` continues the same sequence.

A ``DataLoader`` over an ``IterableDataset`` of whole batches takes items from its workers
round-robin, starting with worker 0 each time an iterator is created. An iterator started at
``start`` therefore gets batch ``start + i`` from worker ``i % W``: worker ``w`` must yield
``start + w, start + w + W, ...``. The stream a batch draws from is keyed by its *virtual worker*
``g % W``, not by the worker that happens to produce it, so the contents do not depend on where
an iterator started.
"""

from __future__ import annotations

from dataclasses import dataclass

from .mixstep import MixStepSchedule

Selector = tuple[int, ...] | None  # phases a batch draws from; None = every phase


def worker_batch_indices(start: int, batches_per_epoch: int, worker: int, num_workers: int) -> range:
    """Global indices worker ``worker`` of ``num_workers`` yields for an iterator begun at ``start``.

    The iterator ends with the epoch that contains ``start``.
    """
    end = (start // batches_per_epoch + 1) * batches_per_epoch
    return range(start + worker, end, num_workers)


def selector_key(selector: Selector) -> list[int]:
    """Integers that identify a selector in seeds (distinct for distinct selectors)."""
    return [0] if selector is None else [len(selector) + 1, *selector]


@dataclass(frozen=True)
class BatchPlan:
    """Epoch length and the phase selection of every batch."""

    batches_per_epoch: int
    schedule: MixStepSchedule | None = None
    phases: tuple[int, ...] | None = None  # static selection when there is no schedule

    def __post_init__(self) -> None:
        if self.batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be >= 1, got {self.batches_per_epoch}")
        if self.schedule is not None and self.phases is not None:
            raise ValueError("give either a mixstep schedule or a static phase filter, not both")

    def epoch(self, g: int) -> int:
        return g // self.batches_per_epoch

    def mixstep_phase(self, g: int) -> int | None:
        if self.schedule is None:
            return None
        return self.schedule.phase_at(g, self.batches_per_epoch)

    def selector(self, g: int) -> Selector:
        if self.schedule is not None:
            return (self.mixstep_phase(g),)
        return self.phases

    def selectors(self) -> list[Selector]:
        """Every selector a batch of this plan can use."""
        if self.schedule is not None:
            return [(p,) for p in range(self.schedule.num_phases)]
        return [self.phases]
