"""Noise schedules: agreement with diffusers' tables, continuous-time access, devices and dtypes."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import LINEAR, SD

from saq_lightning.sampling import DiscreteSchedule, ScheduleError

COSINE = {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000}


@pytest.mark.parametrize("config", [LINEAR, SD, COSINE], ids=["linear", "scaled_linear", "cosine"])
def test_alphas_cumprod_match_diffusers_tables(config):
    from diffusers import DDPMScheduler

    ours = DiscreteSchedule.from_config(**config).alphas_cumprod
    theirs = DDPMScheduler(**config).alphas_cumprod.double()
    # diffusers accumulates the product in float32: 1e-5 relative at the cosine schedule's tail
    assert torch.allclose(ours, theirs, rtol=2e-5, atol=0)


def test_training_index_n_sits_at_t_equal_n_plus_one_over_n():
    sch = DiscreteSchedule.from_config(**LINEAR)
    n = torch.tensor([0, 1, 499, 999])
    t = (n + 1).double() / 1000
    assert torch.allclose(sch.alpha(t) ** 2, sch.alphas_cumprod[n], rtol=1e-12)
    assert torch.allclose(sch.model_timestep(t), n.double(), atol=1e-9)
    assert torch.allclose(sch.t_from_model_timestep(n.double()), t, atol=1e-15)


def test_t_zero_is_clean_data_alpha_one_sigma_zero_lambda_infinite():
    sch = DiscreteSchedule.from_config(**LINEAR)
    t = torch.zeros(1, dtype=torch.float64)
    assert sch.alpha(t).item() == 1.0
    assert sch.sigma(t).item() == 0.0
    assert sch.lambda_(t).item() == float("inf")
    assert sch.t_from_lambda(torch.tensor([float("inf")])).item() == 0.0


def test_log_alpha_is_linear_in_t_between_knots():
    sch = DiscreteSchedule.from_config(**SD)
    t0, t1 = torch.tensor(0.500, dtype=torch.float64), torch.tensor(0.501, dtype=torch.float64)
    mid = sch.log_alpha((t0 + t1) / 2)
    assert torch.allclose(mid, (sch.log_alpha(t0) + sch.log_alpha(t1)) / 2, rtol=1e-12)


@pytest.mark.parametrize("config", [LINEAR, SD, COSINE], ids=["linear", "scaled_linear", "cosine"])
def test_t_from_lambda_inverts_lambda(config):
    sch = DiscreteSchedule.from_config(**config)
    t = torch.cat([torch.linspace(1.0, 0.001, 997, dtype=torch.float64), torch.tensor([0.0004, 0.0])])
    assert torch.allclose(sch.t_from_lambda(sch.lambda_(t)), t, rtol=0, atol=1e-12)


def test_sigma_squared_plus_alpha_squared_is_one():
    sch = DiscreteSchedule.from_config(**COSINE)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(sch.alpha(t) ** 2 + sch.sigma(t) ** 2, torch.ones_like(t), atol=1e-14)


def test_queries_follow_the_input_dtype_and_never_go_below_float32():
    sch = DiscreteSchedule.from_config(**LINEAR)
    assert sch.alpha(torch.tensor([0.5], dtype=torch.float32)).dtype == torch.float32
    assert sch.lambda_(torch.tensor([0.5], dtype=torch.float64)).dtype == torch.float64
    assert sch.sigma(torch.tensor([0.5], dtype=torch.bfloat16)).dtype == torch.float32


def test_float32_queries_agree_with_float64_to_float32_precision():
    sch = DiscreteSchedule.from_config(**SD)
    t = torch.linspace(0.001, 1.0, 50, dtype=torch.float64)
    assert torch.allclose(sch.lambda_(t.float()).double(), sch.lambda_(t), rtol=1e-5, atol=1e-5)


def test_moved_schedule_answers_like_the_original():
    sch = DiscreteSchedule.from_config(**LINEAR)
    moved = sch.to("cpu", torch.float32)
    t = torch.tensor([0.3, 0.7])
    assert torch.allclose(moved.alpha(t), sch.alpha(t), rtol=1e-6)


def test_from_config_accepts_a_full_diffusers_scheduler_config():
    from diffusers import DDIMScheduler

    config = dict(DDIMScheduler(**SD).config)  # has steps_offset, clip_sample, ...
    sch = DiscreteSchedule.from_config(**config)
    assert sch.num_train_timesteps == 1000


def test_cosine_is_an_alias_of_squaredcos_cap_v2():
    a = DiscreteSchedule.from_config("cosine").alphas_cumprod
    b = DiscreteSchedule.from_config("squaredcos_cap_v2").alphas_cumprod
    assert torch.equal(a, b)


def test_unknown_beta_schedule_is_a_clear_value_error():
    with pytest.raises(ValueError, match="beta_schedule must be one of .* got 'quadratic'"):
        DiscreteSchedule.from_config("quadratic")


def test_betas_outside_zero_one_are_rejected():
    with pytest.raises(ScheduleError, match="betas must lie in"):
        DiscreteSchedule(torch.tensor([0.1, 1.5]))
