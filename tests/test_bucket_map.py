"""The explicit timestep-bucket map: per-grid tables, collisions named, nested grids shared."""

from __future__ import annotations

import logging

import pytest
import torch
from quant_helpers import calibrated_class_student, class_batch

from saq_lightning.alignment.buckets import bucket_map_for, student_grids
from saq_lightning.data.mixstep import MixStepPhase
from saq_lightning.quant import bucket_index, quantize_model
from saq_lightning.quant.bucket_map import BucketCollisionError, BucketMap
from saq_lightning.sampling import SPACINGS, DiscreteSchedule, time_grid

STEPS = (10, 20, 50, 100)


@pytest.fixture(scope="module")
def schedule() -> DiscreteSchedule:
    return DiscreteSchedule(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", STEPS)
def test_every_spacing_gives_distinct_buckets_to_distinct_steps(schedule, spacing, steps):
    bmap = bucket_map_for(schedule, spacing, [MixStepPhase(steps)], n_buckets=100)
    row = bmap.table(f"phase 0 (student_steps={steps})")
    assert len(set(row)) == steps
    assert list(row) == sorted(row, reverse=True)  # noisier steps, higher buckets
    assert all(0 <= b < 100 for b in row)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_nested_phases_share_buckets_exactly(schedule, spacing):
    phases = [MixStepPhase(n) for n in (100, 50, 20, 10)]
    bmap = bucket_map_for(schedule, spacing, phases, n_buckets=100)
    fine = dict(zip(bmap.grids[0].timesteps, bmap.table("phase 0 (student_steps=100)"), strict=True))
    assert len(set(fine.values())) == 100
    for p, n in enumerate((50, 20, 10), start=1):
        grid = bmap.grids[p]
        assert set(grid.timesteps) <= set(fine)  # the grids nest (leading ones at their end)
        assert list(bmap.table(grid.name)) == [fine[t] for t in grid.timesteps]


def test_value_keyed_buckets_collide_where_the_map_does_not(schedule):
    """Why the map exists: floor(timestep * n_buckets / N) shares buckets on these grids."""
    for spacing in ("time_quadratic", "logSNR"):
        ts = schedule.model_timestep(time_grid(schedule, 100, spacing)[:-1])
        assert bucket_index(ts, 100, 1000).unique().numel() < 90  # 83 and 74 on this schedule
        bmap = bucket_map_for(schedule, spacing, [MixStepPhase(100)], 100)
        assert bmap.lookup(ts).unique().numel() == 100


def test_time_uniform_keeps_the_buckets_of_the_value_rule(schedule):
    bmap = bucket_map_for(schedule, "time_uniform", [MixStepPhase(n) for n in (100, 50, 20, 10)], 100)
    for n in (100, 50, 20, 10):
        ts = schedule.model_timestep(time_grid(schedule, n, "time_uniform")[:-1])
        assert torch.equal(bmap.lookup(ts), bucket_index(ts, 100, 1000))


def test_a_grid_with_more_steps_than_buckets_is_refused_naming_phase_spacing_and_steps(schedule):
    with pytest.raises(BucketCollisionError,
                       match=r"phase 1 \(student_steps=20\) \(logSNR, 20 steps\): 10 activation-"
                             r"quantizer timestep buckets cannot give its steps distinct buckets: "
                             r"steps \[18, 19\] -> bucket 0;"):
        bucket_map_for(schedule, "logSNR", [MixStepPhase(10), MixStepPhase(20)], n_buckets=10)


def test_non_nested_phases_beyond_the_bucket_count_share_nearest_anchor_buckets(schedule):
    # 10 and 3 time-uniform steps: 12 distinct points, 10 buckets -> the 3-step grid takes the
    # buckets of its nearest 10-step points (still distinct within the grid)
    bmap = bucket_map_for(schedule, "time_uniform", [MixStepPhase(10), MixStepPhase(3)], 10)
    assert bmap.table("phase 0 (student_steps=10)") == tuple(range(9, -1, -1))
    assert bmap.table("phase 1 (student_steps=3)") == (9, 6, 2)  # 999, 666, 333 -> 999, 699.3, 299.7


def test_float32_timesteps_find_their_trained_bucket(schedule):
    bmap = bucket_map_for(schedule, "time_quadratic", [MixStepPhase(100)], 100)
    t32 = time_grid(schedule, 100, "time_quadratic")[:-1].float()
    ts = schedule.model_timestep(t32)
    assert ts.dtype == torch.float32
    assert bmap.lookup(ts).tolist() == list(bmap.table("phase 0 (student_steps=100)"))


def test_an_untrained_timestep_takes_the_nearest_trained_bucket_and_says_so_once(schedule, caplog):
    bmap = bucket_map_for(schedule, "time_uniform", [MixStepPhase(10)], 100)
    trained, buckets = bmap.points()
    with caplog.at_level(logging.WARNING, logger="saq_lightning.quant.bucket_map"):
        got = bmap.lookup(torch.tensor([trained[3] + 30.0, trained[3] - 20.0, 2000.0, -5.0]))
        bmap.lookup(torch.tensor([123.4]))
    assert got.tolist() == [buckets[3], buckets[3], buckets[0], buckets[-1]]
    warnings = [r for r in caplog.records if "nearest trained timestep" in r.getMessage()]
    assert len(warnings) == 1 and "time_uniform/10" in warnings[0].getMessage()


def test_the_map_is_part_of_the_students_state_dict(schedule):
    _, student = calibrated_class_student()
    bmap = bucket_map_for(schedule, "logSNR", [MixStepPhase(20), MixStepPhase(10)], 100)
    student.set_bucket_map(bmap)
    fresh, _ = quantize_model(type(student.unet)(**student.unet.config), "w4a4", warn=False)
    fresh.load_state_dict(student.state_dict(), strict=False)
    ts = schedule.model_timestep(time_grid(schedule, 20, "logSNR")[:-1]).float()
    assert fresh.bucket_map.trained
    assert torch.equal(fresh.bucket_index(ts, 20), student.bucket_index(ts, 20))
    assert BucketMap.from_dict(bmap.to_dict()).same_as(bmap)


def test_the_student_forward_uses_its_map(schedule):
    _, student = calibrated_class_student()
    bmap = bucket_map_for(schedule, "logSNR", [MixStepPhase(100)], 100)
    student.set_bucket_map(bmap)
    grids = student_grids(schedule, "logSNR", [MixStepPhase(100)])
    t = torch.tensor(grids[0].timesteps[-2:], dtype=torch.float32)  # value rule: both bucket 0
    seen = []
    q = next(q for _, q in student.act_quantizers())
    q.observer = lambda x, b: seen.append(b.tolist())
    batch = class_batch(2)
    student(batch["sample"], t, class_labels=batch["class_labels"])
    assert seen[0] == [1, 0]


def test_a_map_for_another_bucket_count_is_refused(schedule):
    _, student = calibrated_class_student()
    with pytest.raises(ValueError, match="n_buckets=50"):
        student.set_bucket_map(bucket_map_for(schedule, "logSNR", [MixStepPhase(10)], 50))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_leading_grid_timesteps_survive_the_continuous_time_round_trip_exactly(schedule, dtype):
    n = torch.arange(1000, dtype=torch.float64)
    t = schedule.t_from_model_timestep(n).to(dtype)  # (n + 1) / N, as samplers hold it
    back = schedule.model_timestep(t)
    assert back.dtype == dtype
    assert torch.equal(back, n.to(dtype))  # 510 and 250, not 509.99997 and 249.99998
    grid = time_grid(schedule, 1000, "leading")[:-1].to(dtype)
    assert torch.equal(schedule.model_timestep(grid), torch.arange(999, -1, -1, dtype=dtype))


def test_an_integer_export_keeps_the_bucket_map(schedule, tmp_path):
    from saq_lightning.quant import export_student
    from saq_lightning.quant.export import load_exported

    _, student = calibrated_class_student()
    student.set_bucket_map(bucket_map_for(schedule, "time_quadratic", [MixStepPhase(20)], 100))
    folder = export_student(student, tmp_path / "export")
    loaded = load_exported(folder)
    assert loaded.bucket_map.same_as(student.bucket_map)


@pytest.mark.parametrize("spacing", SPACINGS)
def test_intermediate_points_get_buckets_of_their_own_and_leave_the_grid_tables(schedule, spacing):
    phases = [MixStepPhase(20), MixStepPhase(10)]
    plain = bucket_map_for(schedule, spacing, phases, n_buckets=100)
    both = bucket_map_for(schedule, spacing, phases, n_buckets=100, intermediate=[2, 2])
    assert both.tables == plain.tables and both.same_as(plain)  # the grid buckets do not move
    grid_buckets = {b for row in plain.tables.values() for b in row}
    for g in both.grids:
        mids = torch.tensor(g.intermediate, dtype=torch.float64)
        assert mids.numel() == g.steps
        got = both.lookup(mids)
        borrowed = plain.lookup(mids)  # what they had before: the nearest grid point's bucket
        own = [b not in grid_buckets for b in got.tolist()]
        # every midpoint that is not itself a grid point has a bucket no grid point uses
        on_grid = [bool((torch.tensor(both.points(intermediate=False)[0], dtype=torch.float64) - m).abs().min()
                        <= both.tolerance) for m in mids]
        assert [not o for o in on_grid] == own
        assert torch.equal(got[torch.tensor(on_grid)], borrowed[torch.tensor(on_grid)])
        assert len(set(got.tolist())) == g.steps


def test_time_uniform_midpoints_of_10_steps_are_20_step_grid_points(schedule):
    both = bucket_map_for(schedule, "time_uniform", [MixStepPhase(20), MixStepPhase(10)], 100, intermediate=[2, 2])
    fine = dict(zip(both.grids[0].timesteps, both.table("phase 0 (student_steps=20)"), strict=True))
    ten = both.grids[1]
    assert both.intermediate_tables[ten.name] == tuple(fine[min(fine, key=lambda p: abs(p - t))]
                                                       for t in ten.intermediate)
    assert len(both.points()[0]) == 40  # 20 grid points + the 20 midpoints of the 20-step grid


def test_own_intermediate_points_leave_out_those_that_are_grid_points(schedule):
    both = bucket_map_for(schedule, "time_uniform", [MixStepPhase(20), MixStepPhase(10)], 100, intermediate=[2, 2])
    assert both.own_intermediate_points() == list(both.grids[0].intermediate)  # the 10-step ones are on the grid
    assert bucket_map_for(schedule, "time_uniform", [MixStepPhase(10)], 20).own_intermediate_points() == []


def test_intermediate_buckets_round_trip_and_an_older_map_still_loads(schedule):
    both = bucket_map_for(schedule, "logSNR", [MixStepPhase(10)], 40, intermediate=[3])
    again = BucketMap.from_dict(both.to_dict())
    assert again.intermediate_tables == both.intermediate_tables and again.grids == both.grids
    old = both.to_dict()
    for g in old["grids"]:
        g.pop("intermediate"), g.pop("intermediate_buckets")
    assert BucketMap.from_dict(old).same_as(both)  # a map recorded without intermediate points


def test_too_few_buckets_for_the_intermediate_points_is_refused_naming_the_count(schedule):
    with pytest.raises(BucketCollisionError, match=r"10 intermediate points need activation buckets of their "
                                                   r"own and 15 buckets leave 5 after the 10 grid points; "
                                                   r"use n_buckets >= 20"):
        bucket_map_for(schedule, "logSNR", [MixStepPhase(10)], 15, intermediate=[2])
