"""Trajectory diagnostics: definitions on analytic flows, TensorBoard scalars, the plot, the
``diagnose`` command."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from saq_lightning.cli import main
from saq_lightning.metrics.trajectory_diagnostics import (
    log_to_tensorboard,
    rms_distance,
    save_diagnostics_plot,
    trajectory_diagnostics,
)
from saq_lightning.sampling import DiscreteSchedule, GaussianData, time_grid

SCHEDULE = DiscreteSchedule.from_config("linear", 1e-4, 0.02, 1000)
GRID = time_grid(SCHEDULE, 6, "time_uniform")
SHAPE = (4, 2, 3, 3)


def x_T() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def data(std: float | tuple[float, float]) -> GaussianData:
    """Gaussian data with one ``std`` for all features, or stds spread over ``(low, high)``."""
    lo, hi = (std, std) if isinstance(std, float) else std
    spread = torch.linspace(lo, hi, torch.Size(SHAPE[1:]).numel(), dtype=torch.float64).reshape(SHAPE[1:])
    return GaussianData(SCHEDULE, torch.full(SHAPE[1:], 0.3, dtype=torch.float64), spread)


def biased(model: GaussianData, bias: float = 0.05):
    """A 'quantized' student: the exact predictor plus a fixed error pattern."""
    pattern = torch.randn(SHAPE[1:], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return lambda x, t, cond=None: model(x, t) + bias * pattern


@pytest.fixture(scope="module")
def curved():
    # features with different stds: eps_i ~ sigma z_i / sqrt(alpha^2 std_i^2 + sigma^2) turns over time
    teacher = data((0.1, 1.5))
    return trajectory_diagnostics(teacher, biased(teacher), x_T(), GRID, SCHEDULE)


def test_rms_distance_is_the_root_mean_square_over_elements_averaged_over_the_batch():
    a = torch.zeros(2, 3, 4)
    b = torch.stack([torch.full((3, 4), 0.5), torch.full((3, 4), 1.5)])
    assert rms_distance(a, b).tolist() == [0.5, 1.5]


def test_a_student_equal_to_the_teacher_has_zero_distance_at_every_step():
    teacher = data((0.1, 1.5))
    d = trajectory_diagnostics(teacher, teacher, x_T(), GRID, SCHEDULE)
    for o in d.orders.values():
        assert max(o.distance_same) == 0.0
        assert o.distance_aligned == o.fp_distance_aligned
        assert o.straightness_student == o.straightness_fp


def test_a_flow_whose_eps_keeps_its_direction_is_straight():
    # one std for all features: eps = sigma z / sqrt(v_t) along a trajectory, a fixed direction z
    d = trajectory_diagnostics(data(0.2), data(0.2), x_T(), GRID, SCHEDULE)
    for o in d.orders.values():
        assert o.straightness_fp == pytest.approx(1.0, abs=1e-12)
        assert max(o.turning_fp) < 1e-12


def test_a_curved_flow_is_less_than_straight(curved):
    assert all(o.straightness_fp < 1 - 1e-6 for o in curved.orders.values())
    assert curved.straightness_aligned < 1 - 1e-6


def test_distances_start_at_zero_and_grow_with_a_biased_student(curved):
    for o in curved.orders.values():
        assert len(o.distance_same) == len(GRID)
        assert o.distance_same[0] == 0.0 and o.distance_same[-1] > 1e-3


def test_the_order_matching_the_aligned_solver_is_the_same_trajectory(curved):
    # dpm3 run at order 2 is DPM-Solver-2, the default aligned solver (dpm2)
    two = curved.orders[2]
    assert two.distance_same == pytest.approx(two.distance_aligned, abs=1e-12)
    assert max(two.fp_distance_aligned) < 1e-12
    assert curved.orders[1].fp_distance_aligned[-1] > 0  # DPM-Solver-1 is a different trajectory


def test_summary_has_the_scalars_per_order(curved):
    summary = curved.summary()
    assert summary["order1/final_distance_same"] == curved.orders[1].distance_same[-1]
    assert {f"order{k}/straightness_student" for k in (1, 2, 3)} <= set(summary)


def test_tensorboard_holds_the_per_step_curves_and_the_summary(curved, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as writer:
        log_to_tensorboard(curved, writer)
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    curve = [e.value for e in events.Scalars("trajectory/order3/distance_aligned")]
    assert curve == pytest.approx(curved.orders[3].distance_aligned, rel=1e-6)  # stored as float32
    assert [e.step for e in events.Scalars("trajectory/order1/turning_student")] == list(range(1, len(GRID) - 1))
    assert "trajectory/order2/straightness_student" in events.Tags()["scalars"]


def test_plot_is_a_png_of_three_panels(curved, tmp_path):
    save_diagnostics_plot(curved, tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").size == (3 * 460, 340 + 24)


def test_diagnose_command_writes_json_plot_and_tensorboard(tmp_path):
    out = tmp_path / "diag"
    main(["diagnose", "--out", str(out), "--student", "fp", "--num_samples", "4", "--steps", "3",
          "--orders", "[1, 2]", "--device", "cpu"])
    result = json.loads((out / "diagnostics.json").read_text())
    assert sorted(result["orders"]) == ["1", "2"] and result["steps"] == 3
    assert result["summary"]["order1/final_distance_same"] == 0.0  # the FP model against itself
    assert (out / "trajectory_diagnostics.png").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
