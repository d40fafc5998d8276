"""Bad input gets a clear ValueError/TypeError naming the argument and what was expected."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import gaussian_problem

from saq_lightning.sampling import (
    DPMSolver,
    DPMSolverMultistep,
    GridError,
    ModelOutputError,
    SolverConfigError,
    make_solver,
    sample,
    step_with_direction,
    time_grid,
)


@pytest.fixture
def problem():
    return gaussian_problem(batch=3)


def test_unknown_solver_name_lists_the_known_ones(problem):
    sch, _, _ = problem
    with pytest.raises(ValueError, match=r"solver must be one of \('ddim', 'plms', .*got 'euler'"):
        make_solver("euler", sch)


def test_unsupported_order_in_the_solver_config(problem):
    sch, _, _ = problem
    with pytest.raises(SolverConfigError, match=r"order must be in \(1, 2, 3\) for DPMSolver, got 4"):
        DPMSolver(sch, order=4)


@pytest.mark.parametrize("order", [0, 4, torch.tensor([1, 2, 5])])
def test_unsupported_per_sample_order(problem, order):
    sch, data, x_T = problem
    with pytest.raises(SolverConfigError, match=r"order must be in \(1, 2, 3\) for DPMSolver, got [045]"):
        step_with_direction(data, x_T, 0.9, 0.5, make_solver("dpm2", sch), order=order)


def test_per_sample_order_of_the_wrong_length(problem):
    sch, data, x_T = problem
    with pytest.raises(SolverConfigError, match=r"order must be an int or a \[B\] = \[3\] tensor, got shape \(2,\)"):
        sample(data, x_T, time_grid(sch, 4), make_solver("dpm2", sch), order=torch.tensor([1, 2]))


def test_ddim_has_only_first_order(problem):
    sch, data, x_T = problem
    with pytest.raises(SolverConfigError, match=r"order must be in \(1,\) for DDIM, got 2"):
        step_with_direction(data, x_T, 0.9, 0.5, make_solver("ddim", sch), order=2)


def test_unknown_algorithm_and_solver_type(problem):
    sch, _, _ = problem
    with pytest.raises(SolverConfigError, match="algorithm must be one of"):
        DPMSolverMultistep(sch, algorithm="unipc")
    with pytest.raises(SolverConfigError, match="solver_type must be one of"):
        DPMSolverMultistep(sch, solver_type="dpmsolver")


def test_multistep_with_fewer_steps_than_its_order(problem):
    sch, data, x_T = problem
    with pytest.raises(SolverConfigError, match=r"steps must be >= order .*order 3\), got steps=2"):
        sample(data, x_T, time_grid(sch, 2), make_solver("dpm3m", sch))


def test_singlestep_allows_fewer_steps_than_its_order(problem):
    sch, data, x_T = problem
    # one step fits every spacing rule: the solver is told time_grid's default
    assert sample(data, x_T, time_grid(sch, 1), make_solver("dpm3", sch, spacing="logSNR")).shape == x_T.shape


def test_multistep_step_without_enough_history(problem):
    sch, data, x_T = problem
    with pytest.raises(SolverConfigError, match="order 3 needs 2 previous evaluations in history, got 0"):
        step_with_direction(data, x_T, 0.9, 0.5, make_solver("dpm3m", sch), order=3)


def test_grid_increasing_in_noise_is_rejected_by_sample(problem):
    sch, data, x_T = problem
    with pytest.raises(GridError, match="strictly decreasing in noise"):
        sample(data, x_T, torch.tensor([0.1, 0.5, 0.9]), make_solver("ddim", sch))


def test_step_towards_more_noise_is_rejected_naming_the_row(problem):
    sch, data, x_T = problem
    s = torch.tensor([0.9, 0.5, 0.5], dtype=torch.float64)
    t = torch.tensor([0.8, 0.6, 0.4], dtype=torch.float64)
    with pytest.raises(GridError, match="t must be less noisy than s .* at batch row 1"):
        step_with_direction(data, x_T, s, t, make_solver("dpm2", sch))


def test_times_of_the_wrong_shape(problem):
    sch, data, x_T = problem
    with pytest.raises(GridError, match=r"s must be a scalar or a \[B\] = \[3\] tensor, got shape \(2,\)"):
        step_with_direction(data, x_T, torch.tensor([0.9, 0.8]), 0.5, make_solver("dpm2", sch))


def test_model_returning_the_wrong_shape(problem):
    sch, _, x_T = problem

    def bad(x, t, cond):
        return x[:, :-1]

    with pytest.raises(ModelOutputError, match=r"returned shape \(3, 5\) for x of shape \(3, 6\)"):
        sample(bad, x_T, time_grid(sch, 3), make_solver("ddim", sch))


def test_model_returning_a_wrong_shape_only_on_sub_batches_is_caught(problem):
    sch, data, x_T = problem

    def bad(x, t, cond):
        return data.eps(x, t) if x.shape[0] == 3 else data.eps(x, t)[:, :2]

    with pytest.raises(ModelOutputError):
        step_with_direction(bad, x_T, 0.9, 0.5, make_solver("dpm2", sch, intermediate="lambda"),
                            order=torch.tensor([1, 2, 2]))


def test_model_returning_a_non_tensor(problem):
    sch, _, x_T = problem
    with pytest.raises(TypeError, match="must return a torch.Tensor"):
        sample(lambda x, t, c: {"sample": x}, x_T, time_grid(sch, 3), make_solver("ddim", sch))


def test_order_with_a_grid_that_fixes_orders(problem):
    from saq_lightning.sampling import solver_grid

    sch, data, x_T = problem
    with pytest.raises(SolverConfigError, match="order must be None when the grid fixes the per-step orders"):
        sample(data, x_T, solver_grid(sch, 3, 2), make_solver("dpm2", sch), order=2)


def test_inner_points_for_a_multistep_solver(problem):
    from saq_lightning.sampling import solver_grid

    sch, data, x_T = problem
    with pytest.raises(GridError, match="inner points is for singlestep DPMSolver, not DPMSolverMultistep"):
        sample(data, x_T, solver_grid(sch, 3, 2), make_solver("dpm2m", sch))


def test_non_solver_argument():
    _, data, x_T = gaussian_problem(batch=2)
    with pytest.raises(TypeError, match="solver must be a Solver"):
        sample(data, x_T, [1.0, 0.5], "dpm2")
