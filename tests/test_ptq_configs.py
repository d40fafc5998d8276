"""Every SA-PTQ config parses with the ptq command's CLI and builds: the digits ones for real, the
big models' students and blocks on the ``meta`` device (no weights read, no memory)."""

from __future__ import annotations

import pytest
from config_helpers import CONFIGS, meta_student, parse

from saq_lightning.alignment.ptq import PTQSettings
from saq_lightning.alignment.settings import GenerationSettings
from saq_lightning.commands.ptq import load_ptq_run
from saq_lightning.data import MixStepSchedule
from saq_lightning.quant import as_policy
from saq_lightning.quant.reconstruction import find_blocks

DIGITS = ["digits_w8a8_saptq.yaml", "digits_w4a8_saptq.yaml"]
BIG = ["ldm4_w8a8_saptq.yaml", "ldm4_bedrooms_w8a8_saptq.yaml"]
#: the method's lineage (BRECQ / AdaRound / Q-Diffusion), spelled out in every config
LINEAGE = {"num_samples": 1024, "iters": 10000, "rounding_weight": 0.01, "beta_start": 20.0,
           "beta_end": 2.0, "warmup": 0.2, "act_iters": 5000, "act_lr": 0.0004}


def test_every_saptq_config_is_covered_here():
    assert sorted(p.name for p in CONFIGS.glob("*_saptq.yaml")) == sorted(DIGITS + BIG)


@pytest.mark.parametrize("name", DIGITS + BIG)
def test_saptq_configs_hold_the_lineage_defaults_and_second_order_pairs(name):
    cfg = parse(name)
    ptq = PTQSettings(**{k: v for k, v in vars(cfg.ptq).items() if not k.startswith("__")})
    assert {k: getattr(ptq, k) for k in LINEAGE} == LINEAGE
    assert ptq.objective == "mixed_order"
    init = cfg.model.init_args.as_dict()
    assert GenerationSettings(**init["generation"]).store_pairs
    policy = as_policy(init["policy"])
    assert policy.lp_p == 2.4 and policy.name == name.split("_")[-2]
    mix = cfg.mixstep
    schedule = MixStepSchedule(tuple(mix.init_args.as_dict()["phases"]))
    assert {p.teacher_order for p in schedule.phases} == {2}
    if name == "ldm4_w8a8_saptq.yaml":  # the paper's setting
        assert [p.student_steps for p in schedule.phases] == [20] and init["guidance_scale"] == 1.5


@pytest.mark.parametrize("name", BIG)
def test_big_saptq_configs_build_student_and_blocks_on_the_meta_device(name):
    cfg = parse(name)
    _, student = meta_student(cfg.model.init_args.as_dict())
    blocks = find_blocks(student.unet, *PTQSettings().block_definition())
    covered = {n for b in blocks for n, _ in b.layers}
    assert covered == {n for n, _ in student.quant_layers()}  # every quantized layer, once
    kinds = {b.kind for b in blocks}
    assert {"ResnetBlock2D", "TimestepEmbedding"} <= kinds
    assert kinds & {"Transformer2DModel", "Attention"}


@pytest.mark.parametrize("name", DIGITS)
def test_digits_saptq_configs_build_module_data_and_settings_for_real(name):
    parts, settings = load_ptq_run(["--config", str(CONFIGS / name)])
    module = parts.setup
    assert module.teacher.sample_shape == (1, 8, 8) and module.policy.name == name.split("_")[1]
    assert parts.shards == f"runs/{name.removesuffix('.yaml')}/trajectories"
    assert settings.output == f"runs/{name.removesuffix('.yaml')}"
    blocks = find_blocks(module.student.unet, *settings.block_definition())
    assert {n for b in blocks for n, _ in b.layers} == {n for n, _ in module.student.quant_layers()}


@pytest.mark.parametrize("name", DIGITS + BIG)
def test_saptq_configs_name_their_sampler_and_the_role_that_suits_it(name):
    from saq_lightning.alignment.ptq import resolve_roles
    from saq_lightning.alignment.ptq_sampler import default_role, resolve_sampler

    cfg = parse(name)
    ptq = PTQSettings(**{k: v for k, v in vars(cfg.ptq).items() if not k.startswith("__")})
    init = cfg.model.init_args.as_dict()
    mix = cfg.mixstep
    phases = MixStepSchedule(tuple(mix.init_args.as_dict()["phases"])).phases
    sampler = resolve_sampler(ptq.solver, ptq.order, ptq.steps, ptq.spacing, init["spacing"],
                              init["guidance_scale"], phases)
    assert (sampler.solver, sampler.order) == ("dpm1", 1)  # the first-order sampler of dual acceleration
    assert sampler.steps in {p.student_steps for p in phases}  # pairs exist on the sampler's grid
    assert ptq.pair_roles == default_role(sampler) == "fp_second_order"
    assert resolve_roles(ptq.reconstruction(), sampler)[1] is None  # nothing to warn about
