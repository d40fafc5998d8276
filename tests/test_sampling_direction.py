"""``eps_eff``: a first-order step with it reproduces any solver's step, per sample, in mixed batches."""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import RecordingModel, gaussian_problem, lone_step_options

from saq_lightning.sampling import (
    SOLVER_NAMES,
    DPMSolver,
    Evaluation,
    make_solver,
    sample,
    step_coefficients,
    step_with_direction,
    time_grid,
)

ORDERS = {"ddim": (1,), "plms": (1, 2, 3, 4), "dpm1": (1, 2, 3), "dpm2": (1, 2, 3), "dpm3": (1, 2, 3),
          "dpm2m": (1, 2, 3), "dpm3m": (1, 2, 3), "dpm++1": (1, 2, 3), "dpm++2s": (1, 2, 3), "dpm++3s": (1, 2, 3),
          "dpm++2m": (1, 2, 3), "dpm++3m": (1, 2, 3)}


def first_order_step(sch, x_s, s, t, eps):
    """DDIM / DPM-Solver-1 written out from the definitions (independent of the solvers)."""
    a_s, a_t, sig_t = sch.alpha(s), sch.alpha(t), sch.sigma(t)
    h = sch.lambda_(t) - sch.lambda_(s)
    return (a_t / a_s)[:, None] * x_s - (sig_t * torch.expm1(h))[:, None] * eps


def point_with_history(data, x_T, s, n_hist=3):
    """States at per-sample times ``s`` and exact-flow history one equal step back each."""
    b = x_T.shape[0]
    one = torch.ones(b, dtype=torch.float64)
    dt = 0.05
    history = []
    for k in range(n_hist, 0, -1):
        tk = s + k * dt
        xk = data.flow(x_T, one, tk)
        history.append(Evaluation(xk, tk, data.eps(xk, tk)))
    return data.flow(x_T, one, s), history


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_first_order_step_with_eps_eff_reproduces_the_step_for_every_solver_and_order(name):
    sch, data, x_T = gaussian_problem(batch=6)
    s = torch.tensor([0.8, 0.7, 0.6, 0.5, 0.4, 0.3], dtype=torch.float64)
    t = s - torch.tensor([0.1, 0.05, 0.2, 0.1, 0.3, 0.15], dtype=torch.float64)  # per-sample steps
    x_s, history = point_with_history(data, x_T, s)
    solver = make_solver(name, sch, **lone_step_options(name))
    for order in ORDERS[name]:
        out = step_with_direction(data, x_s, s, t, solver, order=order, history=history)
        assert torch.allclose(first_order_step(sch, x_s, s, t, out.eps_eff), out.x_t, rtol=0, atol=1e-12)
        # and eps_eff is the definition ((alpha_t/alpha_s) x_s - x_t) / (sigma_t (e^h - 1))
        c = step_coefficients(sch, s, t)
        definition = ((c.alpha_t / c.alpha_s)[:, None] * x_s - out.x_t) / (c.sigma_t * torch.expm1(c.h))[:, None]
        assert torch.allclose(out.eps_eff, definition, rtol=0, atol=1e-10)


def test_eps_eff_of_dpm_solver2_with_midpoint_is_the_teacher_at_the_intermediate_point():
    from conftest import make_tiny_unet2d

    from saq_lightning.sampling import DiscreteSchedule, discrete_model

    unet = make_tiny_unet2d().eval().double()
    sch = DiscreteSchedule.from_config("scaled_linear", 0.00085, 0.012, 1000)

    def eps_fn(x, timestep, cond):
        with torch.no_grad():
            return unet(x, timestep, class_labels=cond).sample

    teacher = RecordingModel(discrete_model(eps_fn, sch))
    x_s = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    s, t = torch.tensor([0.9, 0.6, 0.3], dtype=torch.float64), torch.tensor([0.7, 0.5, 0.05], dtype=torch.float64)
    out = step_with_direction(teacher, x_s, s, t, DPMSolver(sch, order=2, r2=0.5, intermediate="lambda"), cond=torch.tensor([0, 4, 9]))
    at_midpoint = out.evaluations[1]
    lam_mid = (sch.lambda_(s) + sch.lambda_(t)) / 2
    assert torch.allclose(sch.lambda_(at_midpoint.t), lam_mid, atol=1e-12)
    assert torch.allclose(out.eps_eff, at_midpoint.eps, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["plms", "dpm3", "dpm++3s", "dpm3m", "dpm++3m"])
def test_mixed_orders_in_one_batch_equal_uniform_batches(name):
    sch, data, x_T = gaussian_problem(batch=6)
    s = torch.full((6,), 0.6, dtype=torch.float64)
    t = torch.full((6,), 0.45, dtype=torch.float64)
    x_s, history = point_with_history(data, x_T, s)
    solver = make_solver(name, sch, **lone_step_options(name))
    order = torch.tensor([1, 2, 3, 3, 2, 1])
    mixed = step_with_direction(data, x_s, s, t, solver, order=order, history=history)
    for k in (1, 2, 3):
        alone = step_with_direction(data, x_s, s, t, solver, order=k, history=history)
        rows = order == k
        assert torch.allclose(mixed.x_t[rows], alone.x_t[rows], rtol=0, atol=1e-13)
        assert torch.allclose(mixed.eps_eff[rows], alone.eps_eff[rows], rtol=0, atol=1e-13)
    assert torch.equal(mixed.order, order)


def test_singlestep_evaluates_intermediate_points_only_for_samples_that_need_them():
    sch, data, x_T = gaussian_problem(batch=5)
    model = RecordingModel(data)
    step_with_direction(model, x_T, 0.9, 0.5, make_solver("dpm3", sch, intermediate="lambda"), order=torch.tensor([1, 1, 2, 3, 1]))
    assert [n for n, _ in model.calls] == [5, 2, 1]  # x_s for all; s1 for orders 2, 3; s2 for order 3


def test_per_sample_times_equal_one_call_per_sample():
    sch, data, x_T = gaussian_problem(batch=3)
    s = torch.tensor([0.95, 0.5, 0.2], dtype=torch.float64)
    t = torch.tensor([0.9, 0.1, 0.0], dtype=torch.float64)
    solver = make_solver("dpm2", sch, intermediate="lambda")
    batched = step_with_direction(data, x_T, s, t, solver)
    for i in range(3):
        one = step_with_direction(data, x_T[i : i + 1], s[i], t[i], solver)
        assert torch.allclose(batched.x_t[i], one.x_t[0], rtol=0, atol=1e-13)
        assert torch.allclose(batched.eps_eff[i], one.eps_eff[0], rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["dpm3", "dpm++2m", "dpm3m"])
def test_a_dpm_step_ending_at_t0_is_first_order_and_returns_the_data_prediction(name):
    sch, data, x_T = gaussian_problem(batch=4)
    s = torch.full((4,), 0.3, dtype=torch.float64)
    x_s, history = point_with_history(data, x_T, s)
    out = step_with_direction(data, x_s, s, 0.0, make_solver(name, sch), order=3, history=history)
    x0_pred = (x_s - sch.sigma(s)[:, None] * data.eps(x_s, s)) / sch.alpha(s)[:, None]
    assert torch.equal(out.order, torch.ones(4, dtype=torch.long))
    assert torch.allclose(out.x_t, x0_pred, rtol=0, atol=1e-13)
    assert torch.allclose(out.eps_eff, data.eps(x_s, s), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["dpm2", "dpm++3s", "dpm2m", "dpm++3m", "plms", "ddim"])
def test_trajectory_records_the_eps_eff_that_step_with_direction_gives_at_its_points(name):
    sch, data, x_T = gaussian_problem(batch=4)
    solver = make_solver(name, sch, **lone_step_options(name, "logSNR"))
    order = torch.tensor([1, 2, 3, 2]) if name not in ("plms", "ddim") else None
    result = sample(data, x_T, time_grid(sch, 6, "logSNR"), solver, order=order, return_trajectory=True)
    traj = result.trajectory
    assert torch.equal(traj.states[0], x_T) and torch.equal(traj.states[-1], result.sample)
    history = []
    for i in range(traj.steps):
        s, t = traj.times[i].expand(4), traj.times[i + 1].expand(4)
        out = step_with_direction(data, traj.states[i], s, t, solver, order=traj.orders[i], history=history)
        assert torch.allclose(out.eps_eff, traj.eps_eff[i], rtol=0, atol=1e-12)
        assert torch.allclose(out.x_t, traj.states[i + 1], rtol=0, atol=1e-12)
        history.append(Evaluation(traj.states[i], s, out.eps_s))
    pts = traj.points()
    assert pts.x_s.shape == (6 * 4, x_T.shape[1])
    assert torch.equal(pts.eps_eff[4:8], traj.eps_eff[1]) and torch.equal(pts.s[4:8], traj.times[1].expand(4))


def test_multistep_trajectory_warms_up_and_lowers_the_final_orders():
    sch, data, x_T = gaussian_problem(batch=2)
    traj = sample(data, x_T, time_grid(sch, 6, "logSNR"), make_solver("dpm3m", sch), return_trajectory=True).trajectory
    assert traj.orders[:, 0].tolist() == [1, 2, 3, 3, 2, 1]


def test_trajectory_lists_every_model_evaluation_with_its_step_and_rows():
    sch, data, x_T = gaussian_problem(batch=3)
    order = torch.tensor([1, 2, 2])
    traj = sample(data, x_T, time_grid(sch, 4), make_solver("dpm2", sch), order=order,
                  return_trajectory=True).trajectory
    assert [ev.step for ev in traj.evaluations] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert traj.evaluations[1].index.tolist() == [1, 2]
    assert torch.allclose(traj.evaluations[1].eps, data.eps(traj.evaluations[1].x, traj.evaluations[1].t))


def test_float32_sampling_agrees_with_float64():
    sch, data, x_T = gaussian_problem(batch=4)
    grid = time_grid(sch, 10, "logSNR")
    solver = make_solver("dpm++2m", sch)
    x64 = sample(data, x_T, grid, solver)
    x32 = sample(data, x_T.float(), grid, solver)
    assert x32.dtype == torch.float32
    assert torch.allclose(x32.double(), x64, rtol=0, atol=1e-5)
