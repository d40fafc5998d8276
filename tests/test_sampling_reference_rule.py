"""Singlestep DPM-Solver-2/3 against the DPM-Solver paper's update formulas, re-derived here.

How this checks the reference without its code: the paper (Lu et al. 2022, Algorithms 1 and 2
with general r1, r2) writes one k-th order step ``s -> t``, ``h = lambda_t - lambda_s``, as

    u1  = (a_s1/a_s) x - s_s1 (e^{r1 h} - 1) e_s                         D1 = e(u1, s1) - e_s
    k=2: x_t = (a_t/a_s) x - s_t (e^h - 1) e_s - s_t (e^h - 1) D1 / (2 r1)
    u2  = (a_s2/a_s) x - s_s2 (e^{r2 h} - 1) e_s - s_s2 (r2/r1) ((e^{r2 h}-1)/(r2 h) - 1) D1
    k=3: x_t = (a_t/a_s) x - s_t (e^h - 1) e_s - s_t ((e^h - 1)/h - 1) (e(u2, s2) - e_s) / r2

and the reference implementation's ``sample(method="singlestep")`` places ``s1`` (and ``s2``) by
dividing every outer step into ``k`` sub-steps with the outer ``skip_type`` (time_uniform: equal
in t; time_quadratic: equal in sqrt t; logSNR: equal in lambda), ``r_j = (lambda_sj - lambda_s) / h``.
Below, :func:`paper_step` is that, written from the formulas with float64 ``exp``/``expm1`` on
the analytic Gaussian problem (exact eps), and compared with the project's solver to 1e-10.
"""

from __future__ import annotations

import math

import pytest
import torch
from sampling_helpers import gaussian_problem

from saq_lightning.sampling import make_solver, sample, step_with_direction, time_grid


def sub_times(sch, s: float, t: float, k: int, spacing: str) -> list[float]:
    """The k-1 interior points of the step divided by the outer spacing rule."""
    if spacing == "time_uniform":
        return [s + j / k * (t - s) for j in range(1, k)]
    if spacing == "time_quadratic":
        a, b = math.sqrt(s), math.sqrt(t)
        return [(a + j / k * (b - a)) ** 2 for j in range(1, k)]
    ls, lt = (float(sch.lambda_(torch.tensor(v, dtype=torch.float64))) for v in (s, t))
    return [float(sch.t_from_lambda(torch.tensor(ls + j / k * (lt - ls), dtype=torch.float64)))
            for j in range(1, k)]


def paper_step(data, x, s: float, t: float, k: int, inner: list[float]) -> torch.Tensor:
    sch = data.schedule

    def m(v):
        v = torch.tensor(v, dtype=torch.float64)
        return float(sch.alpha(v)), float(sch.sigma(v)), float(sch.lambda_(v))

    b = x.shape[0]
    a_s, _, l_s = m(s)
    a_t, s_t, l_t = m(t)
    h = l_t - l_s
    e_s = data.eps(x, torch.full((b,), s, dtype=torch.float64))
    a1, s1_, l1 = m(inner[0])
    r1 = (l1 - l_s) / h
    u1 = (a1 / a_s) * x - s1_ * math.expm1(r1 * h) * e_s
    d1 = data.eps(u1, torch.full((b,), inner[0], dtype=torch.float64)) - e_s
    if k == 2:
        return (a_t / a_s) * x - s_t * math.expm1(h) * e_s - s_t * math.expm1(h) * d1 / (2 * r1)
    a2, s2_, l2 = m(inner[1])
    r2 = (l2 - l_s) / h
    u2 = ((a2 / a_s) * x - s2_ * math.expm1(r2 * h) * e_s
          - s2_ * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * d1)
    d2 = data.eps(u2, torch.full((b,), inner[1], dtype=torch.float64)) - e_s
    return (a_t / a_s) * x - s_t * math.expm1(h) * e_s - s_t * (math.expm1(h) / h - 1) * d2 / r2


def paper_sample(data, x_T, grid, k: int, rule) -> torch.Tensor:
    x = x_T
    for i in range(grid.numel() - 1):
        s, t = float(grid[i]), float(grid[i + 1])
        x = paper_step(data, x, s, t, k, rule(s, t))
    return x


@pytest.mark.parametrize("spacing", ["time_uniform", "time_quadratic", "logSNR"])
@pytest.mark.parametrize("order", [2, 3])
def test_singlestep_default_follows_the_reference_rule(spacing, order):
    sch, data, x_T = gaussian_problem()
    grid = time_grid(sch, 8, spacing)
    ours = sample(data, x_T, grid, make_solver(f"dpm{order}", sch))
    ref = paper_sample(data, x_T, grid, order, lambda s, t: sub_times(sch, s, t, order, spacing))
    assert (ours - ref).abs().max().item() < 1e-10


@pytest.mark.parametrize("spacing", ["time_uniform", "time_quadratic", "logSNR"])
@pytest.mark.parametrize("order", [2, 3])
def test_lambda_fraction_option_follows_the_papers_fixed_fractions(spacing, order):
    sch, data, x_T = gaussian_problem()
    grid = time_grid(sch, 8, spacing)
    ours = sample(data, x_T, grid, make_solver(f"dpm{order}", sch, intermediate="lambda"))
    ref = paper_sample(data, x_T, grid, order, lambda s, t: sub_times(sch, s, t, order, "logSNR"))
    assert (ours - ref).abs().max().item() < 1e-10


def test_the_two_rules_differ_off_logsnr():
    """What the default changed: on a time-uniform grid the rules give different samples."""
    sch, data, x_T = gaussian_problem()
    grid = time_grid(sch, 8, "time_uniform")
    a = sample(data, x_T, grid, make_solver("dpm2", sch))
    b = sample(data, x_T, grid, make_solver("dpm2", sch, intermediate="lambda"))
    assert (a - b).abs().max().item() > 1e-3


def test_a_lone_step_uses_the_solvers_spacing_and_refuses_to_guess():
    sch, data, x_T = gaussian_problem()
    s, t = 0.8, 0.5
    out = step_with_direction(data, x_T, s, t, make_solver("dpm3", sch, spacing="time_quadratic"))
    ref = paper_step(data, x_T, s, t, 3, sub_times(sch, s, t, 3, "time_quadratic"))
    assert (out.x_t - ref).abs().max().item() < 1e-10
    with pytest.raises(Exception, match="does not know the spacing here: pass spacing="):
        step_with_direction(data, x_T, s, t, make_solver("dpm2", sch))


def test_mixed_orders_in_one_batch_use_each_orders_points():
    sch, data, x_T = gaussian_problem(batch=4)
    grid = time_grid(sch, 5, "time_uniform")
    order = torch.tensor([2, 3, 2, 3])
    ours = sample(data, x_T, grid, make_solver("dpm3", sch), order=order)
    for k in (2, 3):
        rows = order == k
        ref = paper_sample(data, x_T[rows], grid, k, lambda s, t, k=k: sub_times(sch, s, t, k, "time_uniform"))
        assert (ours[rows] - ref).abs().max().item() < 1e-10
