"""Two DDP processes on CPU over uneven shards: disjoint data, the same batch count, no hang."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy

from saq_lightning.data.manifest import load_manifest
from saq_lightning.data.shard_writer import write_trajectory_shards
from saq_lightning.data.synthetic import SyntheticRollout
from saq_lightning.data.trajectory_datamodule import TrajectoryDataModule


class RankRecorder(pl.LightningModule):
    """Trains one scalar (so every step all-reduces gradients) and writes what its rank saw."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[list[list[int]]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append([batch["traj"].tolist(), batch["step"].tolist()])
        return ((self.w - batch["x_s"].mean()) ** 2).sum()

    def on_train_end(self) -> None:
        path = Path(self.out_dir) / f"rank{self.global_rank}.json"
        path.write_text(json.dumps(self.seen))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_two_ddp_ranks_see_disjoint_data_and_equal_batch_counts_on_uneven_shards(tmp_path):
    shards = tmp_path / "shards"
    # 7 shards (one phase each) of 8 or 4 records: rank 0 gets 4 shards, rank 1 gets 3.
    write_trajectory_shards(shards, SyntheticRollout(steps_per_phase=(4, 2), phase_block=2),
                            num_trajectories=14, trajectories_per_shard=2,
                            meta={"model_id": "tiny"}, progress=False)
    per_rank_records = [sum(s.count for s in load_manifest(shards).shards[r::2]) for r in (0, 1)]
    assert per_rank_records[0] != per_rank_records[1]
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, max_epochs=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
        strategy=DDPStrategy(start_method="fork", timeout=timedelta(seconds=60)))
    trainer.fit(RankRecorder(str(tmp_path)), datamodule=TrajectoryDataModule(str(shards),
                                                                              batch_size=4))
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [len(s) for s in seen] == [44 // (2 * 4)] * 2  # default epoch: one pass over all
    points = [{(t, s) for traj, step in batches for t, s in zip(traj, step)} for batches in seen]
    assert not points[0] & points[1]
