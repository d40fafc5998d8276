"""Writes ``base_checkpoint.ckpt``: a 3-step SA-QLoRA fit of the embedded digits teacher with a
tiny policy, on the on-the-fly data, as the code at a given commit saves it. It is the fixture
of ``tests/test_checkpoint_format.py`` (a checkpoint written before issue 24 loads unchanged).

    git archive <commit> saq_lightning | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base python tests/data/write_base_checkpoint.py tests/data/base_checkpoint.ckpt

The run's settings are those of ``tests/test_checkpoint_format.py`` (``RUN``, ``SCHEDULE``, ``DATA``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import lightning.pytorch as pl
import torch

from saq_lightning.callbacks import MixStepCallback
from saq_lightning.data import MixStepPhase, MixStepSchedule, TrajectoryDataModule
from saq_lightning.lightning.checkpoint_io import AtomicCheckpointIO
from saq_lightning.lightning.module import SAQLightningModule

RUN = {"policy": {"preset": "w4a4", "lora_rank": 2, "n_buckets": 10},
       "calibration": {"num_samples": 4, "batch_size": 64, "max_values_per_bucket": 256},
       "optimizer": {"lr": 1e-2, "act_lr": 1e-2, "weight_step_lr": 1e-4, "decay": "constant"},
       "online_points_per_batch": 8}
SCHEDULE = MixStepSchedule((MixStepPhase(10, 1, 2), MixStepPhase(5, 1, 2)), batches_per_phase=2)
DATA = {"batch_size": 4, "image_shape": [1, 8, 8], "num_classes": 10, "batches_per_epoch": 4}
STEPS = 3


def main(out: str) -> None:
    torch.manual_seed(0)
    module = SAQLightningModule(**RUN)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(default_root_dir=tmp, max_steps=STEPS, accelerator="cpu", devices=1,
                             logger=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[MixStepCallback.from_schedule(SCHEDULE)])
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # as `fit` writes them: with a digest
        trainer.fit(module, datamodule=TrajectoryDataModule(None, **DATA))
        trainer.save_checkpoint(Path(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
