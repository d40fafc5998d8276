"""``DigitsFDCallback`` measures the student with the sampler it is trained for: its first phase's
``student_solver`` (default: the run's family) at its ``student_order``, not always singlestep DPM."""

from __future__ import annotations

import pytest
from test_training_helpers import save_tiny_teacher, tiny_module

from saq_lightning.callbacks.digits_fd import DigitsFDCallback
from saq_lightning.data import MixStepPhase
from saq_lightning.students.trained_sampler import sampler_for


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.mark.parametrize(("family", "phase", "solver", "order"), [
    ("plms", MixStepPhase(50, 3, 4, student_solver="plms"), "plms", 3),
    ("dpm", MixStepPhase(10, 2, 3, student_solver="dpm++_multistep"), "dpm++2m", None),
    ("dpm", MixStepPhase(10, 1, 2), "dpm1", None),
    ("dpm++", MixStepPhase(10, 2, 3), "dpm++2s", None),
])
def test_the_fd_sampler_is_the_students(spec, family, phase, solver, order):
    module = tiny_module(spec, teacher_solver=family, spacing="time_uniform")
    module.phases = [phase]
    setting = DigitsFDCallback().trained_setting(module)
    assert (setting.solver, setting.order, setting.steps) == (solver, order, phase.student_steps)


def test_sampler_for_refuses_an_order_the_family_lacks():
    with pytest.raises(ValueError, match="dpm_multistep student has order 1..3, got 4"):
        sampler_for("dpm_multistep", 4)


def test_the_deviation_callback_skips_a_plms_student_saying_why(spec):
    from saq_lightning.callbacks.trajectory_deviation import TrajectoryDeviationCallback

    module = tiny_module(spec, teacher_solver="plms", spacing="leading")
    module.phases = [MixStepPhase(50, 3, 4, student_solver="plms")]
    why = TrajectoryDeviationCallback(steps=20, aligned_solver="dpm2").unmatched_student(module)
    assert why is not None and why.startswith("the student is trained for plms order 3")
    assert TrajectoryDeviationCallback(solver="plms", aligned_solver="plms").unmatched_student(module) is None


def test_the_deviation_callback_runs_for_a_singlestep_dpm_student(spec):
    from saq_lightning.callbacks.trajectory_deviation import TrajectoryDeviationCallback

    module = tiny_module(spec)
    module.phases = [MixStepPhase(10, 1, 2)]
    assert TrajectoryDeviationCallback().unmatched_student(module) is None
