"""Helpers shared by tests/test_training_*.py and tests/test_generate_*.py (no tests here).

A tiny class-conditional teacher (conftest's 8x8 UNet, seeded) saved as a diffusers folder, so that
every run rebuilds the same frozen weights from a file, as real runs do; a small quantization
policy (10 timestep buckets, LoRA rank 2) and a two-phase mixstep schedule (10 and 5 steps
against a 2nd-order teacher).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from conftest import make_tiny_unet2d

from saq_lightning.alignment.generation import generate_trajectories
from saq_lightning.callbacks import MixStepCallback
from saq_lightning.data import MixStepPhase, MixStepSchedule, TrajectoryDataModule
from saq_lightning.lightning.module import SAQLightningModule
from saq_lightning.models import ModelSpec
from saq_lightning.models.digits import DIGITS_SCHEDULE_CONFIG

TINY_POLICY: dict[str, Any] = {"preset": "w4a4", "lora_rank": 2, "n_buckets": 10}
PHASES = (MixStepPhase(10, 1, 2), MixStepPhase(5, 1, 2))
SCHEDULE = MixStepSchedule(PHASES, batches_per_phase=2)


def save_tiny_teacher(folder: Path, seed: int = 0) -> ModelSpec:
    """Write the seeded tiny UNet with ``save_pretrained``; return its spec."""
    torch.manual_seed(seed)
    make_tiny_unet2d().save_pretrained(str(folder))
    return tiny_spec(folder)


def tiny_spec(folder: Path) -> ModelSpec:
    return ModelSpec(kind="diffusers_folder", name="tiny", weights=str(folder),
                     schedule=dict(DIGITS_SCHEDULE_CONFIG),
                     conditioning={"type": "class_labels", "null_class": 10})


def tiny_module(spec: ModelSpec, **overrides: Any) -> SAQLightningModule:
    kwargs: dict[str, Any] = {
        "teacher": spec,
        "policy": TINY_POLICY,
        "optimizer": {"lr": 1e-2, "act_lr": 1e-2, "weight_step_lr": 1e-4, "decay": "constant"},
        "calibration": {"num_samples": 4, "batch_size": 64, "max_values_per_bucket": 256},
        "generation": {"trajectories_per_phase": 8, "trajectories_per_shard": 2},
    }
    kwargs.update(overrides)
    return SAQLightningModule(**kwargs)


def write_tiny_shards(spec: ModelSpec, folder: Path, schedule: MixStepSchedule = SCHEDULE,
                      **module_overrides: Any) -> Path:
    generate_trajectories(tiny_module(spec, **module_overrides), schedule, folder, progress=False)
    return folder


def tiny_datamodule(shards: Path | None, **kwargs: Any) -> TrajectoryDataModule:
    kwargs.setdefault("batch_size", 8)
    return TrajectoryDataModule(str(shards) if shards is not None else None, **kwargs)


class LossRecorder(pl.Callback):
    """Records every optimizer step's logged ``train/loss``."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def tiny_trainer(root: Path, max_steps: int, callbacks: list | None = None,
                 schedule: MixStepSchedule | None = SCHEDULE, **kwargs: Any) -> pl.Trainer:
    """A CPU Trainer without progress bar; mixstep callback first when ``schedule`` is given."""
    cbs = list(callbacks or [])
    if schedule is not None:
        cbs.insert(0, MixStepCallback.from_schedule(schedule))
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", any(isinstance(c, pl.callbacks.ModelCheckpoint)
                                                  for c in cbs))
    kwargs.setdefault("devices", 1)
    return pl.Trainer(default_root_dir=root, max_steps=max_steps, accelerator="cpu",
                      enable_progress_bar=False, enable_model_summary=False, callbacks=cbs,
                      log_every_n_steps=1, **kwargs)
