"""``strategy: ddp`` with 2 CPU processes: both ranks train on disjoint trajectory points and end
with the same student (gradients are all-reduced; the frozen teacher needs no
``find_unused_parameters``)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.strategies import DDPStrategy
from test_training_helpers import (
    SCHEDULE,
    save_tiny_teacher,
    tiny_datamodule,
    tiny_module,
    tiny_trainer,
    write_tiny_shards,
)

from saq_lightning.quant import trainable_state_dict

STEPS = 4


class RankRecorder(pl.Callback):
    """Writes, per rank, the (trajectory, step) points it trained on and its final student."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.points: list[list[int]] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.points += [[t, s] for t, s in zip(batch["traj"].tolist(), batch["step"].tolist())]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))

    def on_train_end(self, trainer, pl_module) -> None:
        state = trainable_state_dict(pl_module.student)
        digest = float(sum(t.double().sum() for t in state.values() if t.is_floating_point()))
        Path(self.out, f"rank{trainer.global_rank}.json").write_text(json.dumps(
            {"points": self.points, "losses": self.losses, "state_sum": digest}))


def test_two_cpu_ddp_ranks_train_on_disjoint_points_and_stay_in_sync(tmp_path):
    spec = save_tiny_teacher(tmp_path / "teacher")
    shards = write_tiny_shards(spec, tmp_path / "shards")  # 8 shards: 4 per phase, 2 per rank
    module = tiny_module(spec)
    strategy = DDPStrategy(start_method="fork", timeout=timedelta(seconds=120))
    trainer = tiny_trainer(tmp_path, STEPS, [RankRecorder(str(tmp_path))], schedule=SCHEDULE,
                           strategy=strategy, devices=2)
    trainer.fit(module, datamodule=tiny_datamodule(shards, batch_size=4))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    points = [{tuple(p) for p in r["points"]} for r in ranks]
    assert len(ranks[0]["points"]) == len(ranks[1]["points"]) == STEPS * 4
    assert not points[0] & points[1]
    assert all(len(r["losses"]) == STEPS for r in ranks)
    assert ranks[0]["state_sum"] == ranks[1]["state_sum"]
