"""Helpers for tests that drive ``python -m saq_lightning`` (in-process or as a real subprocess) on
the tiny teacher of ``test_training_helpers`` (no tests here)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from test_training_helpers import PHASES, TINY_POLICY, save_tiny_teacher, write_tiny_shards

from saq_lightning.models import ModelSpec

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def tiny_fit_config(path: Path, spec: ModelSpec, shards: Path, run_dir: Path, max_steps: int,
                    extra_callbacks: list[dict] | None = None, **model_overrides: Any) -> Path:
    """A fit config of the tiny teacher: checkpoints every step in ``run_dir/ckpt``, TensorBoard in
    ``run_dir/tb``, no progress bar."""
    model: dict[str, Any] = {
        "teacher": {k: v for k, v in asdict(spec).items() if v is not None},
        "policy": dict(TINY_POLICY),
        "optimizer": {"lr": 1e-2, "act_lr": 1e-2, "weight_step_lr": 1e-4, "decay": "linear",
                      "warmup_steps": 0, "final_lr_factor": 0.0},
        "calibration": {"num_samples": 4, "batch_size": 64, "max_values_per_bucket": 256},
        "generation": {"trajectories_per_phase": 8, "trajectories_per_shard": 2},
    }
    model.update(model_overrides)
    phases = [{"student_steps": p.student_steps, "student_order": p.student_order,
               "teacher_order": p.teacher_order} for p in PHASES]
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "devices": 1, "max_steps": max_steps, "log_every_n_steps": 1,
            "enable_progress_bar": False, "enable_model_summary": False,
            "default_root_dir": str(run_dir),
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(run_dir), "name": "tb", "default_hp_metric": False}},
            "callbacks": [
                *(extra_callbacks or []),
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                 "init_args": {"dirpath": str(run_dir / "ckpt"), "save_last": True, "save_top_k": 0,
                               "every_n_train_steps": 1}},
            ],
        },
        "mixstep": {"phases": phases, "mode": "cycle", "batches_per_phase": 2},
        "model": {"class_path": "saq_lightning.lightning.module.SAQLightningModule", "init_args": model},
        "data": {"class_path": "saq_lightning.data.TrajectoryDataModule",
                 "init_args": {"shards": str(shards), "batch_size": 8, "batches_per_epoch": 7}},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def cli_env() -> dict[str, str]:
    """This checkout's package (and the tests' helper modules) first, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def start_cli(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m saq_lightning <args>`` as a real process, output to ``log``."""
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "saq_lightning", *args], cwd=REPO, env=cli_env(),
                            stdout=handle, stderr=subprocess.STDOUT)


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "saq_lightning", *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_main(args: list[str], capsys) -> tuple[int, str]:
    """``saq_lightning.cli.main(args)`` in this process: its exit code (0 when it returned) and stderr."""
    from saq_lightning.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


def fit_tiny_checkpoint(root: Path) -> tuple[ModelSpec, Path]:
    """The tiny teacher and a real one-step ``fit`` checkpoint of it (CFG 2 on a logSNR grid)."""
    from saq_lightning.cli import main

    spec = save_tiny_teacher(root / "teacher")
    shards = write_tiny_shards(spec, root / "shards", guidance_scale=2.0, spacing="logSNR")
    config = tiny_fit_config(root / "fit.yaml", spec, shards, root / "run", 1, guidance_scale=2.0,
                             spacing="logSNR")
    main(["fit", "--config", str(config)])
    return spec, root / "run" / "ckpt" / "last.ckpt"
