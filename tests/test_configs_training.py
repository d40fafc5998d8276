"""Every training config parses with the CLI and builds: the digits default for real, the big
models' architectures on the ``meta`` device (no weights read, no memory)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from saq_lightning.callbacks import MixStepCallback
from saq_lightning.cli import SAQLightningCLI
from saq_lightning.commands.generate import load_run
from saq_lightning.data import MixStepSchedule, TrajectoryDataModule
from saq_lightning.lightning.module import resolve_policy
from saq_lightning.lightning.settings import (
    CalibrationSettings,
    GenerationSettings,
    LossSettings,
    OptimizerSettings,
    TeacherSettings,
)
from saq_lightning.models import ModelSpec, build_model
from saq_lightning.quant import quantize_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BIG = ["ldm4_w4a4.yaml", "ldm4_w4a8.yaml", "ldm8_churches_w4a4.yaml", "sd14_w4a8.yaml"]
PAPER_STEPS = [100, 50, 20, 10]


class _ParseOnlyCLI(SAQLightningCLI):
    def instantiate_classes(self) -> None:
        return None


def parse(name: str):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")
        return _ParseOnlyCLI(args=["--config", str(CONFIGS / name)], run=False).config


def test_every_training_config_is_covered_here():
    found = sorted(p.name for p in CONFIGS.glob("*_w4a*.yaml") if not p.name.endswith("_saptq.yaml"))  # PTQ: test_ptq_configs.py
    assert found == sorted(["digits_w4a4.yaml", *BIG])


@pytest.mark.parametrize("name", BIG)
def test_big_configs_build_their_student_on_the_meta_device_with_the_papers_settings(name):
    cfg = parse(name)
    init = cfg.model.init_args.as_dict()
    spec = ModelSpec(**{k: v for k, v in init["teacher"].items() if k != "__path__"})
    policy = resolve_policy(init["policy"])
    callbacks = [c for c in cfg.trainer.callbacks if c.class_path.endswith("MixStepCallback")]
    phases = callbacks[0].init_args.as_dict()["phases"]
    schedule = MixStepSchedule(tuple(phases), batches_per_phase=callbacks[0].init_args.batches_per_phase)
    schedule.check_buckets(policy.n_buckets)
    assert [p.student_steps for p in schedule.phases] == PAPER_STEPS
    assert {(p.student_order, p.teacher_order) for p in schedule.phases} == {(1, 2)}
    assert policy.lora_rank == 32 and policy.name == name.split("_")[-1].removesuffix(".yaml")
    for cls, key in ((LossSettings, "loss"), (OptimizerSettings, "optimizer"),
                     (CalibrationSettings, "calibration")):
        cls(**init[key])
    assert OptimizerSettings(**init["optimizer"]).decay == "linear"
    TeacherSettings(init["teacher_solver"], init["spacing"], init["guidance_scale"])
    if name.startswith("ldm4"):
        assert init["guidance_scale"] == 2.0
    generation = GenerationSettings(**init["generation"])
    assert len(generation.per_phase(schedule.num_phases)) == 4
    TrajectoryDataModule(**cfg.data.init_args.as_dict())
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Churches has no downsampler convs to match
        model = build_model(spec, load_weights=False)
        student, _ = quantize_model(model.unet, policy)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert 0 < trainable < 0.1 * sum(p.numel() for p in model.unet.parameters())
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.strategy == "ddp"


def test_the_digits_default_builds_model_data_and_schedule_for_real():
    parts = load_run(["--config", str(CONFIGS / "digits_w4a4.yaml")])
    module = parts.model
    assert module.teacher.sample_shape == (1, 8, 8) and module.policy.name == "w4a4"
    assert module.teacher_settings.guidance_scale == 2.0
    assert isinstance(parts.datamodule, TrajectoryDataModule)
    assert parts.datamodule.shards == "runs/digits_w4a4/trajectories"
    parts.schedule.check_buckets(module.policy.n_buckets)
    assert module.expected_trajectory_meta()["conditions"]["num_classes"] == 10
    cfg = parse("digits_w4a4.yaml")
    assert any(c.class_path.endswith("MixStepCallback") for c in cfg.trainer.callbacks)
    assert isinstance(MixStepCallback.from_schedule(parts.schedule), MixStepCallback)
