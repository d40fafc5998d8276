"""Convergence on an analytic problem: Gaussian data, exact eps and exact probability-flow solution.

Global error = RMS distance of the final sample to the exact ODE solution (float64). The observed
order is the least-squares slope of -log(error) against log(steps) on uniform-logSNR grids of 40,
80 and 160 steps, where every solver is in its asymptotic regime; tolerance +-0.25 around the
nominal order.
"""

from __future__ import annotations

import itertools

import pytest
from sampling_helpers import exact_end, gaussian_problem, loglog_slope, rms

from saq_lightning.sampling import SOLVER_NAMES, make_solver, sample, time_grid

FIT_STEPS = [40, 80, 160]
TOL = 0.25


def errors(name, steps, spacing="logSNR", **options):
    sch, data, x_T = gaussian_problem()
    solver = make_solver(name, sch, **options)
    out = []
    for n in steps:
        grid = time_grid(sch, n, spacing)
        out.append(rms(sample(data, x_T, grid, solver) - exact_end(data, x_T, grid)))
    return out


@pytest.mark.parametrize(
    "name, order",
    [("ddim", 1), ("dpm1", 1), ("dpm++1", 1),
     ("dpm2", 2), ("dpm++2s", 2), ("dpm2m", 2), ("dpm++2m", 2),
     ("dpm3", 3), ("dpm++3s", 3)],
)
def test_global_error_converges_at_the_solver_order(name, order):
    slope = loglog_slope(FIT_STEPS, errors(name, FIT_STEPS))
    assert abs(slope - order) < TOL, f"{name}: observed order {slope:.2f}, expected {order}"


@pytest.mark.parametrize("name", ["dpm3m", "dpm++3m"])
def test_multistep_third_order_with_the_exact_taylor_weight_is_at_least_third_order(name):
    slope = loglog_slope(FIT_STEPS, errors(name, FIT_STEPS, exact_third_order=True))
    assert slope > 3 - TOL


@pytest.mark.parametrize("name", ["dpm3m", "dpm++3m"])
def test_reference_multistep_third_order_as_in_diffusers_is_second_order(name):
    # DPM-Solver's reference code and diffusers weight D2 = (D1_0 - D1_1)/(r0 + r1) ~ h^2 m''/2 by
    # phi_3/phi_1, half the Taylor coefficient: an O(h^3) local error. Kept for agreement.
    slope = loglog_slope(FIT_STEPS, errors(name, FIT_STEPS))
    assert abs(slope - 2) < TOL


def test_plms_is_second_order_for_the_exponential_integrator():
    # Adams-Bashforth weights on eps are not the exponentially weighted ones (phi_2/phi_1 = 1/2 + h/12 + ...),
    # so PLMS with DDIM's transfer is second order whatever its nominal order.
    slope = loglog_slope(FIT_STEPS, errors("plms", FIT_STEPS))
    assert abs(slope - 2) < TOL


@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_error_falls_as_steps_grow_for_every_solver(name):
    errs = errors(name, [5, 10, 20, 50], spacing="time_quadratic")
    assert all(a > b for a, b in itertools.pairwise(errs)), errs
