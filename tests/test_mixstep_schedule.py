"""Mixstep schedule: phase sequences of both modes and validation of phases and bucket counts."""

from __future__ import annotations

import pytest

from saq_lightning.data.mixstep import MixStepPhase, MixStepSchedule


def phases_of(schedule, n, per_epoch=None):
    return [schedule.phase_at(b, per_epoch) for b in range(n)]


def test_cycle_runs_each_phase_for_batches_per_phase_and_restarts_each_epoch():
    schedule = MixStepSchedule.from_steps([100, 50, 20], batches_per_phase=2)
    assert phases_of(schedule, 14, per_epoch=7) == [0, 0, 1, 1, 2, 2, 0,  0, 0, 1, 1, 2, 2, 0]
    assert phases_of(schedule, 8) == [0, 0, 1, 1, 2, 2, 0, 0]


def test_progressive_advances_per_block_of_batches_and_stays_on_the_last_phase():
    schedule = MixStepSchedule.from_steps([100, 50, 10], mode="progressive", batches_per_phase=3)
    assert phases_of(schedule, 12) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2]


def test_progressive_by_epochs_uses_the_epoch_length():
    schedule = MixStepSchedule.from_steps([50, 10], mode="progressive", epochs_per_phase=2)
    assert phases_of(schedule, 10, per_epoch=2) == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="needs batches_per_epoch"):
        schedule.phase_at(0)


def test_default_teacher_uses_the_student_grid_with_its_own_order():
    phase = MixStepPhase(student_steps=20, student_order=1, teacher_order=2)
    assert phase.teacher_steps == 20 and phase.teacher_nfe == 40


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"student_steps": 20, "teacher_steps": 30}, "teacher_steps 30 is not a multiple of"),
        ({"student_steps": 0}, "student_steps must be a positive int"),
        ({"student_steps": 10, "teacher_order": 5}, r"teacher_order must be 1, 2, 3 \(or 4 for PLMS\)"),
        ({"student_steps": 10, "student_order": 2, "teacher_order": 1}, "teacher_order 1 is below"),
    ],
)
def test_inconsistent_phase_is_rejected_with_the_reason(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixStepPhase(**kwargs)


def test_bucket_check_names_the_phases_with_more_steps_than_buckets():
    MixStepSchedule.from_steps([100, 50, 30, 10]).check_buckets(100)  # the bucket map checks spacing
    with pytest.raises(ValueError, match=r"phase 1 \(student_steps=120\), phase 3 \(student_steps=200\)"):
        MixStepSchedule.from_steps([100, 120, 10, 200]).check_buckets(100)


def test_schedule_validation_and_dict_round_trip():
    with pytest.raises(ValueError, match="mode must be one of"):
        MixStepSchedule.from_steps([10], mode="random")
    with pytest.raises(ValueError, match="epochs_per_phase only applies"):
        MixStepSchedule.from_steps([10], epochs_per_phase=1)
    with pytest.raises(ValueError, match="at least one phase"):
        MixStepSchedule(phases=())
    schedule = MixStepSchedule(phases=({"student_steps": 50}, MixStepPhase(10, 1, 3)),
                               mode="progressive", batches_per_phase=4)
    assert MixStepSchedule.from_dict(schedule.to_dict()) == schedule
    assert schedule.phases[0] == MixStepPhase(50, 1, 2, 50)
