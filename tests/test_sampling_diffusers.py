"""Agreement with diffusers' schedulers on the same tiny UNet, schedule and timesteps.

Everything runs in float64 (the UNet too); diffusers keeps its schedule tables in float32, which
bounds the agreement at ~1e-6 relative. The tolerance is the acceptance bound, 1e-4 relative on
the final sample after 10 steps (a wrong coefficient or point shows up at 1e-2 and above).

Grid conventions (see docs/sampling.md): diffusers' integer timestep ``n`` is our continuous
``t = (n + 1) / 1000``; its final point ``final_sigmas_type="zero"`` / ``set_alpha_to_one=True`` is
``t = 0`` and ``"sigma_min"`` / ``set_alpha_to_one=False`` is ``t = 1/1000``.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_unet2d
from sampling_helpers import SD

from saq_lightning.sampling import (
    DDIM,
    PLMS,
    DiscreteSchedule,
    DPMSolver,
    DPMSolverMultistep,
    discrete_model,
    grid_from_timesteps,
    sample,
    singlestep_grid_from_timesteps,
    time_grid,
)

STEPS = 10
RTOL = 1e-4

# diffusers deprecates algorithm_type="dpmsolver" (noise prediction); we still compare against it.
pytestmark = pytest.mark.filterwarnings("ignore:.*dpmsolver.*:FutureWarning")


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    unet = make_tiny_unet2d().eval().double()
    labels = torch.tensor([1, 3])

    def eps_fn(x, timestep, cond):
        with torch.no_grad():
            return unet(x, timestep, class_labels=cond).sample

    sch = DiscreteSchedule.from_config(**SD)
    x_T = torch.randn(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return eps_fn, sch, labels, x_T


def run_diffusers(scheduler, eps_fn, x_T, labels, generator=None):
    scheduler.set_timesteps(STEPS)
    x = x_T.clone()
    for ts in scheduler.timesteps:
        kwargs = {"generator": generator} if generator is not None else {}
        x = scheduler.step(eps_fn(x, ts, labels), ts, x, **kwargs).prev_sample
    return x, scheduler


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_ddim_eta0_matches_ddimscheduler(setup):
    from diffusers import DDIMScheduler

    eps_fn, sch, labels, x_T = setup
    ref, d = run_diffusers(DDIMScheduler(clip_sample=False, **SD), eps_fn, x_T, labels)
    grid = time_grid(sch, STEPS, "leading")  # diffusers' default: leading, set_alpha_to_one -> t = 0
    assert torch.allclose(grid, grid_from_timesteps(d.timesteps, 1000, "zero"))
    out = sample(discrete_model(eps_fn, sch), x_T, grid, DDIM(sch), cond=labels)
    assert rel_err(out, ref) < RTOL


def test_ddim_eta_positive_matches_ddimscheduler_with_the_same_generator(setup):
    from diffusers import DDIMScheduler

    eps_fn, sch, labels, x_T = setup
    ref, d = run_diffusers(DDIMScheduler(clip_sample=False, **SD), eps_fn, x_T, labels,
                           generator=torch.Generator().manual_seed(7))
    # eta is a step() argument in diffusers: rerun with it
    d.set_timesteps(STEPS)
    g, x = torch.Generator().manual_seed(7), x_T.clone()
    for ts in d.timesteps:
        x = d.step(eps_fn(x, ts, labels), ts, x, eta=0.5, generator=g).prev_sample
    out = sample(discrete_model(eps_fn, sch), x_T, time_grid(sch, STEPS, "leading"), DDIM(sch, eta=0.5),
                 cond=labels, generator=torch.Generator().manual_seed(7))
    assert rel_err(out, x) < RTOL
    assert rel_err(out, ref) > 1e-2  # the noise matters


def test_plms_matches_pndmscheduler_with_skip_prk_steps(setup):
    from diffusers import PNDMScheduler

    eps_fn, sch, labels, x_T = setup
    # Stable Diffusion's configuration: leading spacing, steps_offset=1, set_alpha_to_one=False
    ref, _ = run_diffusers(PNDMScheduler(skip_prk_steps=True, steps_offset=1, **SD), eps_fn, x_T, labels)
    grid = time_grid(sch, STEPS, "leading", steps_offset=1, t_end=1e-3)
    out = sample(discrete_model(eps_fn, sch), x_T, grid, PLMS(sch), cond=labels)
    assert rel_err(out, ref) < RTOL


@pytest.mark.parametrize("algorithm, final", [("dpmsolver", "sigma_min"), ("dpmsolver++", "zero")])
@pytest.mark.parametrize("order, solver_type", [(1, "midpoint"), (2, "midpoint"), (2, "heun"), (3, "midpoint")])
def test_multistep_dpm_solver_matches_dpmsolvermultistepscheduler(setup, algorithm, final, order, solver_type):
    from diffusers import DPMSolverMultistepScheduler

    eps_fn, sch, labels, x_T = setup
    scheduler = DPMSolverMultistepScheduler(solver_order=order, algorithm_type=algorithm, solver_type=solver_type,
                                            final_sigmas_type=final, **SD)
    ref, d = run_diffusers(scheduler, eps_fn, x_T, labels)
    grid = grid_from_timesteps(d.timesteps, 1000, final)
    solver = DPMSolverMultistep(sch, order=order, algorithm=algorithm, solver_type=solver_type)
    out = sample(discrete_model(eps_fn, sch), x_T, grid, solver, cond=labels)
    assert rel_err(out, ref) < RTOL


@pytest.mark.parametrize("algorithm, final", [("dpmsolver", "sigma_min"), ("dpmsolver++", "zero")])
@pytest.mark.parametrize("order, solver_type", [(1, "midpoint"), (2, "midpoint"), (2, "heun"), (3, "midpoint"),
                                                (3, "heun")])
def test_singlestep_dpm_solver_matches_dpmsolversinglestepscheduler(setup, algorithm, final, order, solver_type):
    from diffusers import DPMSolverSinglestepScheduler

    eps_fn, sch, labels, x_T = setup
    scheduler = DPMSolverSinglestepScheduler(solver_order=order, algorithm_type=algorithm, solver_type=solver_type,
                                             final_sigmas_type=final, lower_order_final=True, **SD)
    ref, d = run_diffusers(scheduler, eps_fn, x_T, labels)
    # diffusers counts model calls; its intermediate points are grid points inside each step
    grid = singlestep_grid_from_timesteps(d.timesteps, d.order_list, 1000, final)
    solver = DPMSolver(sch, order=order, algorithm=algorithm, solver_type=solver_type)
    out = sample(discrete_model(eps_fn, sch), x_T, grid, solver, cond=labels)
    assert rel_err(out, ref) < RTOL


@pytest.mark.parametrize("steps", [8, 12])
def test_multistep_lower_order_final_threshold_follows_diffusers_or_the_reference(setup, steps):
    """Default threshold 15 (diffusers, lowering at 8 and 12 steps); 10 is DPM-Solver's reference
    (lowering at 8, not at 12: there it is diffusers with lower_order_final=False)."""
    from diffusers import DPMSolverMultistepScheduler

    eps_fn, sch, labels, x_T = setup
    model = discrete_model(eps_fn, sch)

    def diffusers_run(lower):
        d = DPMSolverMultistepScheduler(solver_order=3, algorithm_type="dpmsolver++", lower_order_final=lower,
                                        final_sigmas_type="zero", **SD)
        d.set_timesteps(steps)
        x = x_T.clone()
        for ts in d.timesteps:
            x = d.step(eps_fn(x, ts, labels), ts, x).prev_sample
        return x, grid_from_timesteps(d.timesteps, 1000, "zero")

    lowered, grid = diffusers_run(True)
    plain, _ = diffusers_run(False)
    ours = sample(model, x_T, grid, DPMSolverMultistep(sch, order=3, algorithm="dpmsolver++"), cond=labels)
    reference = sample(model, x_T, grid, DPMSolverMultistep(sch, order=3, algorithm="dpmsolver++",
                                                            lower_order_final_steps=10), cond=labels)
    unlowered = sample(model, x_T, grid, DPMSolverMultistep(sch, order=3, algorithm="dpmsolver++",
                                                            lower_order_final=False), cond=labels)
    assert rel_err(ours, lowered) < RTOL
    assert rel_err(reference, lowered if steps < 10 else plain) < RTOL
    # exactly one of the two order schedules (the rules differ by 2.6e-4 relative at 12 steps)
    assert rel_err(reference, ours if steps < 10 else unlowered) < 1e-12
    assert rel_err(unlowered, ours) > 1e-5
