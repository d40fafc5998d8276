"""A solver-aware phase's singlestep student evaluates its own intermediate points in training:
they get activation buckets of their own in the student's bucket map (when ``n_buckets`` leaves
room; otherwise one logged line and the nearest grid point's bucket, as before)."""

from __future__ import annotations

import logging

import pytest
import torch
from test_training_helpers import TINY_POLICY, save_tiny_teacher, tiny_module

from saq_lightning.alignment.buckets import intermediate_timesteps
from saq_lightning.alignment.calibration import intermediate_states
from saq_lightning.data import MixStepPhase
from saq_lightning.sampling import DPMSolver, sample


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def test_a_dpm2_student_phase_gets_buckets_for_its_midpoints(spec):
    module = tiny_module(spec, policy={**TINY_POLICY, "n_buckets": 20})
    module.bind_bucket_map([MixStepPhase(10, 2, 2)])
    bmap = module.student.bucket_map
    mids = torch.tensor(intermediate_timesteps(module.flow.schedule, "time_uniform", 10, 2), dtype=torch.float64)
    grid = set(bmap.table("phase 0 (student_steps=10)"))
    got = bmap.lookup(mids).tolist()
    assert len(set(got)) == 10 and not set(got) & grid


def test_a_first_order_student_phase_keeps_the_grid_only_map(spec):
    module = tiny_module(spec, policy={**TINY_POLICY, "n_buckets": 20})
    module.bind_bucket_map([MixStepPhase(10, 1, 2)])
    assert module.student.bucket_map.intermediate_tables == {}


def test_a_plms_student_phase_has_no_intermediate_points(spec):
    module = tiny_module(spec, policy={**TINY_POLICY, "n_buckets": 20}, teacher_solver="plms", spacing="leading")
    module.bind_bucket_map([MixStepPhase(10, 2, 3, student_solver="plms")])
    assert module.student.bucket_map.intermediate_tables == {}


def test_too_few_buckets_log_one_line_and_keep_the_grid_buckets(spec, caplog):
    module = tiny_module(spec)  # 10 buckets, 10 grid points
    with caplog.at_level(logging.WARNING, logger="saq_lightning.lightning.module"):
        module.bind_bucket_map([MixStepPhase(10, 2, 2)])
    lines = [r.getMessage() for r in caplog.records if "intermediate points" in r.getMessage()]
    assert lines == [("the intermediate points share their nearest grid point's activation bucket: 10 "
                     "intermediate points need activation buckets of their own and 10 buckets leave 0 "
                     "after the 10 grid points; use n_buckets >= 20")]
    assert module.student.bucket_map.intermediate_tables == {}


def test_calibration_gives_every_intermediate_bucket_data_of_its_own(spec):
    module = tiny_module(spec, policy={**TINY_POLICY, "n_buckets": 20})
    module.bind_bucket_map([MixStepPhase(10, 2, 2)])
    info = module.calibrate_student()
    assert info["buckets"] == list(range(20))  # 10 grid points + 10 midpoints, none filled from a neighbour
    assert all(bool(qz.calibrated.all()) for _, qz in module.student.act_quantizers())


def test_calibration_states_at_the_midpoints_are_dpm_solver_2s_intermediate_points(spec):
    module = tiny_module(spec, policy={**TINY_POLICY, "n_buckets": 20})
    flow = module.flow
    x_T = torch.randn(3, *flow.model.sample_shape, generator=torch.Generator().manual_seed(0))
    cond = torch.tensor([1, 4, 7])
    traj = sample(flow.predictor(), x_T, flow.grid(10), DPMSolver(flow.schedule, order=2), cond=cond,
                  order=2, return_trajectory=True).trajectory
    mids = [ev for ev in traj.evaluations if ev.step == 0][1]  # step 0: eps(x_T), then the midpoint
    u = float(flow.schedule.model_timestep(mids.t[0]))
    x, t = intermediate_states(flow, traj.states, traj.times, [u], cond)
    assert torch.allclose(t, mids.t.to(t), atol=1e-9)
    torch.testing.assert_close(x, mids.x, rtol=0, atol=1e-5)  # float32 rounding of the same step
