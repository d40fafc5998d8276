"""MixStepCallback under a real Trainer: schedule hand-over, logged phase, module hook, checkpoint."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from saq_lightning.callbacks.mixstep import MixStepCallback
from saq_lightning.data.mixstep import MixStepPhase
from saq_lightning.data.shard_writer import write_trajectory_shards
from saq_lightning.data.synthetic import SyntheticRollout
from saq_lightning.data.trajectory_datamodule import TrajectoryDataModule

PHASES = [MixStepPhase(4), MixStepPhase(2)]


class PhaseRecorder(pl.LightningModule):
    """Records per step: the batch's phase, the logged ``mixstep/phase``, and hook calls."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.batch_phases: list[int] = []
        self.logged: list[float] = []
        self.announced: list[tuple[int, int]] = []

    def on_mixstep_phase(self, index: int, phase: MixStepPhase) -> None:
        self.announced.append((self.global_step, phase.student_steps))

    def training_step(self, batch, batch_idx):
        if isinstance(batch, dict):
            self.batch_phases.append(batch["mixstep_phase"])
            x = batch["x_s"]
        else:
            x = batch[0]
        return ((self.w - x.mean()) ** 2).sum()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.logged.append(float(self.trainer.callback_metrics["mixstep/phase"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_trajectory_shards(folder, SyntheticRollout(steps_per_phase=(4, 2), phase_block=2),
                            num_trajectories=12, trajectories_per_shard=2,
                            meta={"model_id": "tiny"}, progress=False)
    return str(folder)


def trainer_for(root, max_steps, callback, checkpoints=False):
    callbacks = [callback]
    if checkpoints:
        callbacks.append(ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0,
                                         every_n_train_steps=1))
    return pl.Trainer(default_root_dir=root, max_steps=max_steps, accelerator="cpu", devices=1,
                      logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=checkpoints, callbacks=callbacks)


def datamodule(shards):
    return TrajectoryDataModule(shards, batch_size=2, batches_per_epoch=6)


def test_callback_gives_the_data_module_its_schedule_and_logs_the_active_phase(tmp_path, shards):
    callback = MixStepCallback(PHASES, batches_per_phase=2)
    module = PhaseRecorder()
    dm = datamodule(shards)
    trainer_for(tmp_path, 8, callback).fit(module, datamodule=dm)
    assert dm.mixstep == callback.schedule
    expected = [0, 0, 1, 1, 0, 0, 0, 0]  # cycle of 2+2 batches, restarting at the 6-batch epoch
    assert module.batch_phases == expected
    assert module.logged == [float(p) for p in expected]
    assert module.announced == [(0, 4), (2, 2), (4, 4)]
    assert callback.phase_batches == [6, 2] and callback.next_batch == 8


def test_progressive_schedule_without_the_trajectory_data_module(tmp_path):
    callback = MixStepCallback(PHASES, mode="progressive", batches_per_phase=3)
    module = PhaseRecorder()
    loader = DataLoader(TensorDataset(torch.randn(4, 1, 8, 8)), batch_size=1)
    trainer_for(tmp_path, 7, callback).fit(module, train_dataloaders=loader)
    assert module.logged == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]


def test_callback_state_survives_a_checkpoint_and_resume(tmp_path, shards):
    full = MixStepCallback(PHASES, batches_per_phase=2)
    trainer_for(tmp_path / "full", 10, full).fit(PhaseRecorder(), datamodule=datamodule(shards))
    trainer_for(tmp_path / "run", 5, MixStepCallback(PHASES, batches_per_phase=2),
                checkpoints=True).fit(PhaseRecorder(), datamodule=datamodule(shards))
    resumed, module = MixStepCallback(PHASES, batches_per_phase=2), PhaseRecorder()
    trainer_for(tmp_path / "run", 10, resumed, checkpoints=True).fit(
        module, datamodule=datamodule(shards), ckpt_path=str(tmp_path / "run/ckpt/last.ckpt"))
    assert resumed.state_dict() == full.state_dict()
    assert resumed.phase_batches == [6, 4] and resumed.next_batch == 10
    assert module.announced == [(5, 4), (8, 2)]  # told the phase again after the restart


def test_checkpoint_from_another_schedule_is_refused_naming_the_difference():
    saved = MixStepCallback(PHASES, batches_per_phase=2).state_dict()
    with pytest.raises(ValueError, match=r"mixstep\.batches_per_phase: expected 2, found 3"):
        MixStepCallback(PHASES, batches_per_phase=3).load_state_dict(saved)
    lenient = MixStepCallback(PHASES, batches_per_phase=3, strict_resume=False)
    lenient.load_state_dict({**saved, "next_batch": 7})
    assert lenient.next_batch == 7


def test_phases_the_bucket_table_cannot_serve_are_refused():
    with pytest.raises(ValueError, match=r"phase 1 \(student_steps=130\).*100 activation-quantizer"):
        MixStepCallback([MixStepPhase(50), MixStepPhase(130)], n_buckets=100)
