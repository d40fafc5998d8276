"""Exact resume under a real Trainer: a run restarted from ``last.ckpt`` sees the same batches as
one that was never interrupted, mid-epoch and across epochs, with and without workers."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from saq_lightning.data.mixstep import MixStepSchedule
from saq_lightning.data.shard_writer import write_trajectory_shards
from saq_lightning.data.synthetic import SyntheticRollout
from saq_lightning.data.trajectory_datamodule import TrajectoryDataModule


class Recorder(pl.LightningModule):
    """Trains one scalar and records which trajectory points every step saw."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, list[tuple[int, int]]]] = []

    def training_step(self, batch, batch_idx):
        points = list(zip(batch["traj"].tolist(), batch["step"].tolist()))
        self.seen.append((batch["batch_index"], points))
        return ((self.w - batch["x_s"].mean()) ** 2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_trajectory_shards(folder, SyntheticRollout(seed=2, steps_per_phase=(4, 2), phase_block=2),
                            num_trajectories=16, trajectories_per_shard=2,
                            meta={"model_id": "tiny"}, progress=False)
    return str(folder)


def fit(root, shards, max_steps, num_workers, ckpt_path=None, save_every=None):
    """Fit a Recorder; with ``save_every``, ModelCheckpoint keeps ``root/ckpt/last.ckpt``."""
    datamodule = TrajectoryDataModule(
        shards, batch_size=3, num_workers=num_workers, batches_per_epoch=4, seed=11,
        mixstep=MixStepSchedule.from_steps([4, 2], batches_per_phase=1))
    callbacks = []
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0,
                                         every_n_train_steps=save_every))
    trainer = pl.Trainer(default_root_dir=root, max_steps=max_steps, accelerator="cpu",
                         devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=bool(save_every),
                         callbacks=callbacks)
    module = Recorder()
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module, trainer


@pytest.mark.parametrize(
    "num_workers, stop",
    [(0, 6), (0, 8), (2, 5)],
    ids=["mid-epoch", "at-epoch-end", "mid-epoch-2-workers"],
)
def test_resumed_run_continues_the_uninterrupted_batch_sequence(tmp_path, shards, num_workers, stop):
    full, full_trainer = fit(tmp_path / "full", shards, max_steps=11, num_workers=num_workers)
    first, _ = fit(tmp_path / "run", shards, max_steps=stop, num_workers=num_workers, save_every=1)
    resumed, trainer = fit(tmp_path / "run", shards, max_steps=11, num_workers=num_workers,
                           save_every=1, ckpt_path=str(tmp_path / "run" / "ckpt" / "last.ckpt"))
    assert [i for i, _ in full.seen] == list(range(11))  # 4 batches per epoch
    assert [i for i, _ in resumed.seen] == list(range(stop, 11))
    assert first.seen + resumed.seen == full.seen
    assert trainer.global_step == 11
    assert trainer.current_epoch == full_trainer.current_epoch
    assert torch.equal(resumed.w.detach(), full.w.detach())  # same data -> same loss curve
