"""A checkpoint written before the method moved into ``alignment/`` (``SAQSetup``) loads unchanged.

The fixture ``tests/data/base_checkpoint.ckpt`` was written by ``tests/data/write_base_checkpoint.py``
run against the code of commit 5b740aa (the integration branch before issue 24): a 3-step fit of the
digits teacher with a tiny policy on the on-the-fly data, saved as ``fit`` saves (atomic, digest).
Tolerance: exact (a CPU load copies the saved tensors).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning.pytorch as pl
import torch

from saq_lightning.alignment.checkpointing import student_state_dict
from saq_lightning.callbacks import MixStepCallback
from saq_lightning.data import TrajectoryDataModule
from saq_lightning.lightning.checkpoint_io import AtomicCheckpointIO, read_checkpoint
from saq_lightning.lightning.module import SAQLightningModule

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "base_checkpoint.ckpt"


def _writer():
    """The writer script's run settings (``RUN``, ``SCHEDULE``, ``DATA``, ``STEPS``)."""
    spec = importlib.util.spec_from_file_location("write_base_checkpoint", DATA / "write_base_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StateAtTrainStart(pl.Callback):
    """The student's trainable state once Lightning has restored the checkpoint."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.state = {k: v.detach().clone() for k, v in student_state_dict(pl_module.student).items()}
        self.bucket_map = pl_module.student.bucket_map.to_dict()


def test_a_checkpoint_of_the_base_commit_resumes_with_its_student_state_and_buckets(tmp_path):
    base = _writer()
    saved = read_checkpoint(FIXTURE)
    module = SAQLightningModule(**base.RUN)
    seen = StateAtTrainStart()
    trainer = pl.Trainer(default_root_dir=tmp_path, max_steps=base.STEPS + 1, accelerator="cpu",
                         devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[MixStepCallback.from_schedule(base.SCHEDULE), seen])
    trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    trainer.fit(module, datamodule=TrajectoryDataModule(None, **base.DATA), ckpt_path=FIXTURE)
    assert set(seen.state) == set(saved["state_dict"])
    for key, value in saved["state_dict"].items():
        torch.testing.assert_close(seen.state[key], value, rtol=0, atol=0, msg=key)
    assert seen.bucket_map == saved["saq"]["bucket_map"]
    assert module.restored_from_checkpoint and trainer.global_step == base.STEPS + 1


def test_the_module_keeps_the_parameter_names_and_hyperparameters_of_the_base_commit():
    base = _writer()
    saved = read_checkpoint(FIXTURE)
    module = SAQLightningModule(**base.RUN)
    assert {k.split(".")[0] for k in module.state_dict()} == {"teacher", "student"}
    assert set(student_state_dict(module.student)) == set(saved["state_dict"])
    # every hyperparameter of the base commit, unchanged; new: the mixstep schedule (None: not given)
    # and loss.grid_anchor, whose default (0) keeps the base commit's loss
    hparams = {k: v for k, v in module.hparams.items() if k != "mixstep"}
    hparams["loss"] = {k: v for k, v in hparams["loss"].items() if k != "grid_anchor"}
    assert hparams == saved["hyper_parameters"]
    assert module.hparams["mixstep"] is None and module.hparams["loss"]["grid_anchor"] == 0.0
