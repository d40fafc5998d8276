"""Time grids: spacings, diffusers timestep conventions, intermediate points, invalid grids."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import LINEAR, SD

from saq_lightning.sampling import (
    DiscreteSchedule,
    Grid,
    GridError,
    grid_from_timesteps,
    intermediate_times,
    singlestep_grid_from_timesteps,
    solver_grid,
    time_grid,
)


@pytest.fixture
def sch():
    return DiscreteSchedule.from_config(**LINEAR)


def test_logsnr_grid_is_uniform_in_lambda_from_t1_to_one_over_n(sch):
    t = time_grid(sch, 10, "logSNR")
    assert t[0].item() == 1.0 and t[-1].item() == pytest.approx(1e-3, abs=1e-15)
    steps = sch.lambda_(t).diff()
    assert torch.allclose(steps, steps.mean().expand(10), rtol=1e-10)


def test_time_uniform_and_quadratic_grids(sch):
    assert torch.allclose(time_grid(sch, 4, "time_uniform", t_end=0.2), torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2],
                                                                                   dtype=torch.float64))
    quad = time_grid(sch, 4, "time_quadratic", t_end=0.04)
    assert torch.allclose(quad.sqrt().diff(), torch.full((4,), -0.2, dtype=torch.float64), atol=1e-12)


def test_grids_are_float64_cpu_host_constants(sch):
    t = time_grid(sch, 5, "time_uniform")
    assert t.dtype == torch.float64 and t.device.type == "cpu"


def test_leading_grid_matches_diffusers_ddim_timesteps_and_ends_at_alpha_one(sch):
    from diffusers import DDIMScheduler

    d = DDIMScheduler(**LINEAR)
    d.set_timesteps(10)
    t = time_grid(sch, 10, "leading")
    assert torch.allclose(sch.model_timestep(t[:-1]), d.timesteps.double(), atol=1e-9)
    assert t[-1].item() == 0.0


def test_leading_grid_with_offset_matches_stable_diffusion_plms_timesteps():
    from diffusers import PNDMScheduler

    sch = DiscreteSchedule.from_config(**SD)
    d = PNDMScheduler(skip_prk_steps=True, steps_offset=1, **SD)
    d.set_timesteps(20)
    t = time_grid(sch, 20, "leading", steps_offset=1, t_end=1e-3)
    assert torch.allclose(sch.model_timestep(t[:-1]), torch.unique(d.timesteps).flip(0).double(), atol=1e-9)


@pytest.mark.parametrize("final, end", [("zero", 0.0), ("sigma_min", 1e-3), (0.0005, 0.0005)])
def test_grid_from_timesteps_final_point_conventions(final, end):
    t = grid_from_timesteps([999, 499, 99], 1000, final)
    assert t.tolist() == pytest.approx([1.0, 0.5, 0.1, end], abs=1e-15)


def test_solver_grid_puts_order2_inner_point_at_the_lambda_midpoint(sch):
    g = solver_grid(sch, 5, 2)
    lam_mid = sch.lambda_(g.inner[:, 0])
    assert torch.allclose(lam_mid, (sch.lambda_(g.t[:-1]) + sch.lambda_(g.t[1:])) / 2, rtol=1e-10)
    assert g.orders == (2,) * 5 and torch.isnan(g.inner[:, 1]).all()


def test_solver_grid_order3_inner_points_at_one_and_two_thirds(sch):
    g = solver_grid(sch, 3, 3, "time_uniform", fractions=(1 / 3, 2 / 3))
    ls, lt = sch.lambda_(g.t[:-1]), sch.lambda_(g.t[1:])
    assert torch.allclose(sch.lambda_(g.inner), torch.stack([ls + (lt - ls) / 3, ls + 2 * (lt - ls) / 3], 1),
                          rtol=1e-10)


@pytest.mark.parametrize("spacing, coordinate", [("time_uniform", lambda sch, t: t),
                                                 ("time_quadratic", lambda sch, t: t.sqrt()),
                                                 ("logSNR", lambda sch, t: sch.lambda_(t))])
def test_solver_grid_places_inner_points_by_the_outer_spacing_rule_by_default(sch, spacing, coordinate):
    g = solver_grid(sch, 4, 3, spacing)
    cs, ct, ci = coordinate(sch, g.t[:-1]), coordinate(sch, g.t[1:]), coordinate(sch, g.inner)
    assert torch.allclose(ci, torch.stack([cs + (ct - cs) / 3, cs + 2 * (ct - cs) / 3], 1), rtol=1e-10)


def test_solver_grid_step_into_t0_is_first_order_without_inner_points(sch):
    g = solver_grid(sch, 4, 2, "time_uniform", t_end=0.0)
    assert g.orders == (2, 2, 2, 1)
    assert torch.isnan(g.inner[-1]).all()


def test_intermediate_times_broadcast_over_batches(sch):
    s, t = torch.tensor([0.9, 0.5], dtype=torch.float64), torch.tensor([0.8, 0.1], dtype=torch.float64)
    out = intermediate_times(sch, s, t, [0.25, 0.5])
    assert out.shape == (2, 2)
    assert sch.lambda_(out[1, 1]).item() == pytest.approx(((sch.lambda_(s) + sch.lambda_(t)) / 2)[1].item())


def test_singlestep_grid_from_diffusers_order_list_groups_runs_into_steps():
    from diffusers import DPMSolverSinglestepScheduler

    d = DPMSolverSinglestepScheduler(solver_order=3, **LINEAR)
    d.set_timesteps(8)  # model calls
    g = singlestep_grid_from_timesteps(d.timesteps, d.order_list, 1000, "zero")
    assert d.order_list == [1, 2, 3, 1, 2, 3, 1, 1]
    assert g.orders == (3, 3, 1, 1)
    assert sch_model_timesteps(g.inner[0]) == d.timesteps[1:3].tolist()


def sch_model_timesteps(t):
    return [round(v * 1000 - 1) for v in t.tolist()]


def test_grid_not_decreasing_in_noise_is_rejected_naming_the_points():
    with pytest.raises(GridError, match=r"strictly decreasing in noise .* t\[1\]=0.5, t\[2\]=0.7"):
        Grid(torch.tensor([0.9, 0.5, 0.7]))


def test_grid_outside_unit_interval_is_rejected():
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        Grid(torch.tensor([1.5, 0.5]))


def test_grid_needs_at_least_one_step():
    with pytest.raises(GridError, match="at least 2 times"):
        Grid(torch.tensor([0.5]))


def test_logsnr_grid_cannot_end_at_t0(sch):
    with pytest.raises(GridError, match="t_end must be > 0 for spacing='logSNR'"):
        time_grid(sch, 5, "logSNR", t_end=0.0)


def test_unknown_spacing_and_bad_step_counts_are_rejected(sch):
    with pytest.raises(GridError, match="spacing must be one of"):
        time_grid(sch, 5, "karras")
    with pytest.raises(GridError, match="steps must be an integer >= 1, got 0"):
        time_grid(sch, 0)


def test_inner_points_outside_their_step_are_rejected():
    with pytest.raises(GridError, match="inner times of step 0"):
        Grid(torch.tensor([0.9, 0.5]), orders=(2,), inner=torch.tensor([[0.95, float("nan")]]))
