"""Helpers for tests/test_ptq_*.py: a tiny teacher, paired calibration shards, a PTQ config file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from test_training_helpers import TINY_POLICY, save_tiny_teacher, tiny_module

from saq_lightning.alignment.generation import generate_trajectories
from saq_lightning.data import MixStepPhase, MixStepSchedule

PAIR_SCHEDULE = MixStepSchedule((MixStepPhase(10, 1, 2),))
GENERATION = {"trajectories_per_phase": 4, "trajectories_per_shard": 2, "store_pairs": True}
TINY_PTQ: dict[str, Any] = {"num_samples": 24, "iters": 40, "act_iters": 10, "batch_size": 8,
                            "lr": 1e-2, "record_batch_size": 8, "log_every": 10}


def paired_shards(root: Path) -> tuple[Any, Path]:
    spec = save_tiny_teacher(root / "teacher")
    module = tiny_module(spec, generation=GENERATION)
    generate_trajectories(module, PAIR_SCHEDULE, root / "shards", progress=False)
    return spec, root / "shards"


def ptq_config(path: Path, spec: Any, shards: Path, output: Path, **ptq: Any) -> Path:
    """A PTQ config file (training config + ``ptq:``) for the tiny teacher."""
    from dataclasses import asdict

    cfg = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1},
        "mixstep": {"phases": [{"student_steps": 10, "student_order": 1, "teacher_order": 2}],
                    "n_buckets": 10},
        "model": {"class_path": "saq_lightning.lightning.module.SAQLightningModule", "init_args": {
            "teacher": asdict(spec), "policy": dict(TINY_POLICY),
            "calibration": {"num_samples": 4, "batch_size": 64, "max_values_per_bucket": 256},
            "generation": dict(GENERATION)}},
        "data": {"class_path": "saq_lightning.data.TrajectoryDataModule",
                 "init_args": {"shards": str(shards), "batch_size": 8}},
        "ptq": {"output": str(output), **TINY_PTQ, **ptq},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path
