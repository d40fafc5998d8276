"""Which SA-PTQ pair role suits which sampler, derived on Gaussian data (exact eps, closed-form ODE).

SA-PTQ pairs the grid point ``x_{t_j}`` of the teacher's DPM-Solver-2 rollout with the intermediate
point ``x_{s_j}`` of its step (the lambda-midpoint, reached by a first-order step from ``x_{t_j}``).
An *idealised* student reproduces its pairing exactly and extends it to any point the same way:

* ``fp_second_order`` (quantized at the grid point ~ FP at the intermediate point):
  ``Q2(x, tau) = eps(DDIM(x, tau -> tau+), tau+)``, ``lambda(tau+) = lambda(tau) + h/2``: it looks half
  a step ahead.
* ``fp_first_order`` (quantized at the intermediate point ~ FP at the grid point):
  ``Q1(x, tau) = eps(DDIM^-1(x, tau- -> tau), tau-)``, ``lambda(tau-) = lambda(tau) - h/2``: it looks
  half a step back (at ``t = 1`` there is nothing before: ``tau-`` is clamped to 1).

``h`` is the lambda-length of the grid step the query belongs to. Both are sampled with the library's
own DPM-Solver-1/-2 (lambda-midpoints) on the 10-step time-uniform grid; the error is the end-point
RMS against the exact ODE solution (``docs/quant.md``, "Which pair role for which sampler", has the
derivation and the numbers).
"""

from __future__ import annotations

import pytest
import torch
from sampling_helpers import exact_end, gaussian_problem, rms
from torch import Tensor

from saq_lightning.sampling import make_solver, sample, time_grid

STEPS = 10


class Problem:
    """The Gaussian problem, the grid, and the first-order step and its inverse (eps is affine in x)."""

    def __init__(self) -> None:
        self.sch, self.data, self.x_T = gaussian_problem()
        self.grid = time_grid(self.sch, STEPS, "time_uniform")
        self.exact = exact_end(self.data, self.x_T, self.grid)

    def lam(self, t: Tensor) -> Tensor:
        return self.sch.lambda_(t)

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        return self.data.eps(x, t.expand(x.shape[0]))

    def ddim(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """First-order step s -> t with the exact eps at (x, s)."""
        k = self.sch.sigma(t) * torch.expm1(self.lam(t) - self.lam(s))
        return self.sch.alpha(t) / self.sch.alpha(s) * x - k * self.eps(x, s)

    def ddim_inverse(self, y: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """The x with ``ddim(x, s, t) = y`` (eps(x, s) = sigma_s (x - alpha_s m) / v_s is affine)."""
        a_s, sg_s = self.sch.alpha(s), self.sch.sigma(s)
        v_s = a_s ** 2 * self.data.std ** 2 + sg_s ** 2
        k = self.sch.sigma(t) * torch.expm1(self.lam(t) - self.lam(s))
        slope = self.sch.alpha(t) / a_s - k * sg_s / v_s
        return (y - k * sg_s * a_s * self.data.mean / v_s) / slope

    def half_step(self, tau: Tensor) -> Tensor:
        """``h / 2`` of the grid step that ``tau`` (a grid or an intermediate time) belongs to."""
        i = int((self.grid[:-1] >= tau - 1e-12).nonzero().max())
        return (self.lam(self.grid[i + 1]) - self.lam(self.grid[i])) / 2

    def shifted(self, tau: Tensor, sign: int) -> Tensor:
        return self.sch.t_from_lambda(self.lam(tau) + sign * self.half_step(tau)).clamp(max=1.0)

    def end_rms(self, model, solver: str) -> float:
        x = sample(model, self.x_T, self.grid, make_solver(solver, self.sch, intermediate="lambda"))
        return rms(x - self.exact)


@pytest.fixture(scope="module")
def p() -> Problem:
    return Problem()


def fp(p: Problem):
    return lambda x, t, cond=None: p.eps(x, t[:1])


def fp_second_order(p: Problem):
    def student(x, t, cond=None):
        tau = t[:1]
        ahead = p.shifted(tau, +1)
        return p.eps(p.ddim(x, tau, ahead), ahead)
    return student


def fp_first_order(p: Problem):
    def student(x, t, cond=None):
        tau = t[:1]
        back = p.shifted(tau, -1)
        return p.eps(p.ddim_inverse(x, back, tau), back)
    return student


class PairedFirstOrder:
    """``fp_first_order`` exactly as paired: at a step's intermediate point it returns the FP
    direction of the grid point the step started from (the solver queries the grid point first)."""

    def __init__(self, p: Problem) -> None:
        self.p, self.last = p, None

    def __call__(self, x, t, cond=None):
        tau = t[:1]
        if bool(torch.isclose(self.p.grid, tau.to(self.p.grid)).any()):
            self.last = (x, tau)
            return self.p.eps(x, tau)
        return self.p.eps(*self.last)


@pytest.fixture(scope="module")
def errors(p: Problem) -> dict[str, float]:
    return {"fp_dpm1": p.end_rms(fp(p), "dpm1"), "fp_dpm2": p.end_rms(fp(p), "dpm2"),
            "q2_dpm1": p.end_rms(fp_second_order(p), "dpm1"), "q2_dpm2": p.end_rms(fp_second_order(p), "dpm2"),
            "q1_dpm1": p.end_rms(fp_first_order(p), "dpm1"), "q1_dpm2": p.end_rms(fp_first_order(p), "dpm2")}


def test_fp_dpm2_beats_fp_dpm1_on_the_problem(errors):
    # the setting in which a second-order trajectory is worth following (values: docs/quant.md)
    assert errors["fp_dpm1"] == pytest.approx(0.1920, abs=1e-4)
    assert errors["fp_dpm2"] == pytest.approx(0.0787, abs=1e-4)


def test_fp_second_order_under_dpm1_is_fp_dpm2_to_every_digit(p, errors):
    x_q = sample(fp_second_order(p), p.x_T, p.grid, make_solver("dpm1", p.sch))
    x_fp = sample(fp(p), p.x_T, p.grid, make_solver("dpm2", p.sch, intermediate="lambda"))
    torch.testing.assert_close(x_q, x_fp, rtol=0, atol=1e-12)  # float64: dual acceleration is exact
    assert errors["q2_dpm1"] == pytest.approx(errors["fp_dpm2"], abs=1e-12)


def test_fp_second_order_under_dpm2_over_corrects(errors):
    # the solver adds its own correction to a direction that already has it: worse than FP DPM-1
    assert errors["q2_dpm2"] == pytest.approx(0.2983, abs=1e-4)
    assert errors["q2_dpm2"] > 3 * errors["fp_dpm2"] and errors["q2_dpm2"] > errors["fp_dpm1"]


def test_fp_first_order_under_dpm1_lags_behind_fp_dpm1(errors):
    assert errors["q1_dpm1"] == pytest.approx(0.4997, abs=1e-4)
    assert errors["q1_dpm1"] > 2 * errors["fp_dpm1"]


def test_fp_first_order_as_paired_under_dpm2_cancels_the_correction(p, errors):
    # the midpoint evaluation returns the grid point's FP direction: exactly FP DPM-1, at 2x the calls
    x_q = sample(PairedFirstOrder(p), p.x_T, p.grid, make_solver("dpm2", p.sch, intermediate="lambda"))
    x_fp1 = sample(fp(p), p.x_T, p.grid, make_solver("dpm1", p.sch))
    torch.testing.assert_close(x_q, x_fp1, rtol=0, atol=1e-12)
    # extended half a step back everywhere, it is still far from FP DPM-2 (and near FP DPM-1)
    assert errors["q1_dpm2"] == pytest.approx(0.1476, abs=1e-4)
    assert errors["q1_dpm2"] > 1.5 * errors["fp_dpm2"]


def test_no_sampler_makes_fp_first_order_follow_fp_second_order(errors):
    assert min(errors["q1_dpm1"], errors["q1_dpm2"]) > 1.5 * errors["fp_dpm2"]
