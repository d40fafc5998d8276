"""Every training config parses with the CLI and builds: the digits default for real, the big
models' architectures on the ``meta`` device (no weights read, no memory)."""

from __future__ import annotations

import pytest
from config_helpers import CONFIGS, meta_student, parse

from saq_lightning.alignment.settings import (
    CalibrationSettings,
    GenerationSettings,
    LossSettings,
    OptimizerSettings,
    TeacherSettings,
)
from saq_lightning.callbacks import MixStepCallback
from saq_lightning.commands.run_config import load_run_parts
from saq_lightning.data import MixStepSchedule, TrajectoryDataModule
from saq_lightning.quant import as_policy

BIG = ["ldm4_w4a4.yaml", "ldm4_w4a8.yaml", "ldm8_churches_w4a4.yaml", "sd14_w4a8.yaml"]
PAPER_STEPS = [100, 50, 20, 10]
#: the digits configs of the solver-aware modes: (student solver, student order, teacher order) per phase
SOLVER_AWARE = {
    "digits_w4a4_dpm2.yaml": ("dpm", [(None, 2, 2)]),
    "digits_w4a4_orders123.yaml": ("dpm", [(None, 1, 2), (None, 2, 2), (None, 3, 3)]),
    "digits_w4a4_plms.yaml": ("plms", [("plms", 2, 3)] * 2),
    "digits_w4a4_dpmpp_multistep.yaml": ("dpm++_multistep", [("dpm++_multistep", 2, 3)] * 2),
}
AUTHOR = ["digits_w4a4_author.yaml", "ldm4_w4a4_author.yaml"]


def test_every_training_config_is_covered_here():
    found = sorted(p.name for p in CONFIGS.glob("*_w4a*.yaml")
                   if not p.name.endswith("_saptq.yaml"))  # PTQ configs: test_ptq_configs.py
    assert found == sorted(["digits_w4a4.yaml", *BIG, *AUTHOR, *SOLVER_AWARE])


@pytest.mark.parametrize("name", BIG)
def test_big_configs_build_their_student_on_the_meta_device_with_the_papers_settings(name):
    cfg = parse(name)
    init = cfg.model.init_args.as_dict()
    policy = as_policy(init["policy"])
    mixstep = cfg.mixstep.init_args
    phases = mixstep.as_dict()["phases"]
    schedule = MixStepSchedule(tuple(phases), batches_per_phase=mixstep.batches_per_phase)
    schedule.check_buckets(policy.n_buckets)
    if name == "sd14_w4a8.yaml":  # the paper's T2I recipe: PLMS 50 steps, the student one order lower
        assert [(p.student_steps, p.student_order, p.teacher_order, p.student_solver)
                for p in schedule.phases] == [(50, 3, 4, "plms")]
        assert (init["teacher_solver"], init["spacing"], init["guidance_scale"]) == ("plms", "leading", 7.5)
    else:
        assert [p.student_steps for p in schedule.phases] == PAPER_STEPS
        assert {(p.student_order, p.teacher_order) for p in schedule.phases} == {(1, 2)}
    assert policy.lora_rank == 32 and policy.name == name.split("_")[-1].removesuffix(".yaml")
    for cls, key in ((LossSettings, "loss"), (OptimizerSettings, "optimizer"),
                     (CalibrationSettings, "calibration")):
        cls(**init[key])
    assert OptimizerSettings(**init["optimizer"]).decay == "linear"
    TeacherSettings(init["teacher_solver"], init["spacing"], init["guidance_scale"])
    generation = GenerationSettings(**init["generation"])
    assert len(generation.per_phase(schedule.num_phases)) == schedule.num_phases
    TrajectoryDataModule(**cfg.data.init_args.as_dict())
    model, student = meta_student(init, policy)
    if name.startswith("ldm4"):  # trained at the scale its model spec (Table 1) samples at
        assert init["guidance_scale"] == model.sampling_defaults["guidance_scale"] == 1.5
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    assert 0 < trainable < 0.1 * sum(p.numel() for p in model.unet.parameters())
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.strategy == "ddp"


def test_the_digits_default_builds_model_data_and_schedule_for_real():
    parts = load_run_parts(["--config", str(CONFIGS / "digits_w4a4.yaml")])
    module = parts.setup
    assert module.teacher.sample_shape == (1, 8, 8) and module.policy.name == "w4a4"
    assert module.teacher_settings.guidance_scale == 2.0
    datamodule = TrajectoryDataModule(**parts.config.data.init_args.as_dict())
    assert isinstance(datamodule, TrajectoryDataModule)
    assert datamodule.shards == parts.shards == "runs/digits_w4a4/trajectories"
    parts.schedule.check_buckets(module.policy.n_buckets)
    assert module.expected_trajectory_meta()["conditions"]["num_classes"] == 10
    cfg = parse("digits_w4a4.yaml")
    assert cfg.mixstep.class_path.endswith("MixStepCallback")
    assert isinstance(MixStepCallback.from_schedule(parts.schedule), MixStepCallback)


@pytest.mark.parametrize("name", sorted(SOLVER_AWARE))
def test_solver_aware_digits_configs_build_and_their_phases_fit_their_solvers(name):
    from saq_lightning.alignment.student_step import check_phase_solvers

    parts = load_run_parts(["--config", str(CONFIGS / name)])
    module = parts.setup
    teacher, phases = SOLVER_AWARE[name]
    assert module.teacher_settings.solver == teacher
    assert [(p.student_solver, p.student_order, p.teacher_order)
            for p in parts.schedule.phases] == phases
    assert parts.shards == f"runs/{name.removesuffix('.yaml')}/trajectories"
    parts.schedule.check_buckets(module.policy.n_buckets)
    module.bind_bucket_map(parts.schedule.phases)
    check_phase_solvers(module.flow, parts.schedule.phases)
    multistep = teacher != "dpm"
    assert module.flow.history_size(parts.schedule.phases) == (2 if multistep else 0)


def test_the_dpm2_student_config_anchors_its_grid_point():
    """Without the anchor that student fails under DPM-Solver-1/3 (README, "Solver-aware alignment")."""
    module = load_run_parts(["--config", str(CONFIGS / "digits_w4a4_dpm2.yaml")]).setup
    assert module.loss_settings.grid_anchor == 1.0


def _without_comments_and_names(text: str, name: str) -> list[str]:
    return [line.split("#")[0].rstrip().replace(name, "NAME") for line in text.splitlines()
            if line.split("#")[0].strip()]


@pytest.mark.parametrize("name", AUTHOR)
def test_the_author_recipe_is_one_config_away_from_the_default(name):
    """Only the recipe differs from the default config: reductions, LoRA lr, phase batches, spacing."""
    default = name.replace("_author", "")
    ours = _without_comments_and_names((CONFIGS / name).read_text(), name.removesuffix(".yaml"))
    base = _without_comments_and_names((CONFIGS / default).read_text(), default.removesuffix(".yaml"))
    changed = {line.strip() for line in set(ours) ^ set(base)}
    recipe = {"phase_batches: steps", "spacing: time_quadratic", "spacing: time_uniform",
              "w_cos: 100.0", "w_cos: 1.0", "mse_reduction: sum", "cos_reduction: sum",
              "lora_lr_mode: scale_aware", "lora_lr_divisor: 2500.0", "weight_decay: 0.01",
              "act_weight_decay: 0.01"}
    assert {c for c in changed if not c.startswith("batches_per_phase")} <= recipe
    cfg = parse(name)
    init = cfg.model.init_args.as_dict()
    loss, opt = LossSettings(**init["loss"]), OptimizerSettings(**init["optimizer"])
    assert (loss.mse_reduction, loss.cos_reduction, loss.w_cos) == ("sum", "sum", 100.0)
    assert (opt.lora_lr_mode, opt.lora_lr_divisor) == ("scale_aware", 2500.0)
    assert init["spacing"] == "time_quadratic"
    mix = cfg.mixstep.init_args
    schedule = MixStepCallback(**mix.as_dict()).schedule
    steps = [p.student_steps for p in schedule.phases]
    batches = [schedule.batches_of(p) for p in range(schedule.num_phases)]
    assert [b / batches[-1] for b in batches] == [s / steps[-1] for s in steps]  # 100:50:20:10


def test_the_digits_author_recipe_builds_and_binds_its_time_quadratic_buckets():
    parts = load_run_parts(["--config", str(CONFIGS / "digits_w4a4_author.yaml")])
    module = parts.setup
    module.bind_bucket_map(parts.schedule.phases)
    bmap = module.student.bucket_map
    assert [g.spacing for g in bmap.grids] == ["time_quadratic"] * 2
    assert len(set(bmap.table(bmap.grids[0].name))) == 20


def test_the_ldm4_author_recipe_builds_its_student_on_the_meta_device():
    cfg = parse("ldm4_w4a4_author.yaml")
    _, student = meta_student(cfg.model.init_args.as_dict())
    assert sum(p.numel() for p in student.parameters() if p.requires_grad) > 0
