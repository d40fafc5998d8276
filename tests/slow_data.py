"""A trajectory data module whose DataLoader workers are slow (no tests here): the main process then
spends its time waiting for batches, as with large shards, which is where a worker that died of a
terminal's Ctrl-C is noticed."""

from __future__ import annotations

import time

from torch.utils.data import IterableDataset

from saq_lightning.data.trajectory_datamodule import PositionedDataLoader, TrajectoryDataModule


class SlowBatches(IterableDataset):
    def __init__(self, inner, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds

    @property
    def start(self) -> int:  # what PositionedDataLoader.state_dict reads
        return self.inner.start

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        for batch in self.inner:
            time.sleep(self.seconds)
            yield batch


class SlowDataModule(TrajectoryDataModule):
    def __init__(self, shards: str, batch_size: int = 8, batches_per_epoch: int | None = None,
                 num_workers: int = 2, worker_seconds: float = 0.5) -> None:
        super().__init__(shards=shards, batch_size=batch_size, batches_per_epoch=batches_per_epoch,
                         num_workers=num_workers)
        self.worker_seconds = worker_seconds

    def train_dataloader(self) -> PositionedDataLoader:
        loader = super().train_dataloader()
        return PositionedDataLoader(SlowBatches(loader.dataset, self.worker_seconds), batch_size=None,
                                    num_workers=loader.num_workers, persistent_workers=False,
                                    worker_init_fn=loader.worker_init_fn)
