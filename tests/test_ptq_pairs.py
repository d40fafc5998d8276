"""``generate`` with ``store_pairs``: every point carries its DPM-Solver-2 intermediate point from
the same x_T (checked against a fresh rollout of that x_T), and PTQ refuses shards without pairs."""

from __future__ import annotations

import pytest
import torch
from test_training_helpers import SCHEDULE, save_tiny_teacher, tiny_module

from saq_lightning.alignment.conditions import noise_for
from saq_lightning.alignment.generation import generate_trajectories
from saq_lightning.data import load_manifest
from saq_lightning.data.calibration_points import load_calibration_points
from saq_lightning.data.records import decode_sample
from saq_lightning.data.shard_reader import read_shard_samples
from saq_lightning.data.trajectory_pairs import PairsMissingError
from saq_lightning.sampling import sample


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    spec = save_tiny_teacher(root / "teacher")
    module = tiny_module(spec, generation={"trajectories_per_phase": 4, "trajectories_per_shard": 2,
                                           "store_pairs": True})
    generate_trajectories(module, SCHEDULE, root / "paired", progress=False)
    plain = tiny_module(spec, generation={"trajectories_per_phase": 4, "trajectories_per_shard": 2})
    generate_trajectories(plain, SCHEDULE, root / "plain", progress=False)
    return root, module


def test_pairs_are_the_intermediate_points_of_the_same_x_T_rollout(made):
    root, module = made
    manifest = load_manifest(root / "paired")
    assert manifest.meta["pairs"] == "dpm2_intermediate"
    assert manifest.fields["x_mid"]["shape"] == [1, 8, 8]
    info = manifest.shards[0]  # phase 0 (10 steps), trajectories 0 and 1
    records = [decode_sample(r, manifest.fields) for r in read_shard_samples(root / "paired" / info.name, info)]
    traj1 = sorted((r for r in records if r["traj"] == 1), key=lambda r: r["step"])
    x_T = noise_for(0, [0, 1], (1, 8, 8))  # the rollout batch of shard 0, as generate made it
    cond = module.conditions([0, 1])
    res = sample(module.flow.predictor(), x_T, module.flow.grid(10), module.flow.solver, cond=cond,
                 order=2, return_trajectory=True)
    mids = [ev for ev in res.trajectory.evaluations][1::2]  # (x_s, intermediate) per step
    assert len(mids) == 10 and all(r["paired"] == 1 for r in traj1)
    for j, r in enumerate(traj1):
        torch.testing.assert_close(r["x_s"], res.trajectory.states[j, 1], rtol=0, atol=1e-6)
        torch.testing.assert_close(r["x_mid"], mids[j].x[1], rtol=0, atol=1e-6)
        assert r["t"] < r["s_mid"] < r["s"]  # between the step's two grid times
    torch.testing.assert_close(traj1[0]["x_s"], x_T[1])  # the same x_T


def test_calibration_points_keep_each_point_with_its_own_pair(made):
    root, _ = made
    points = load_calibration_points(root / "paired", 16, seed=3)
    assert len(points) == 16 and points.x_mid.shape == points.x_s.shape
    assert bool((points.s_mid < points.s).all())
    again = load_calibration_points(root / "paired", 16, seed=3)
    assert torch.equal(points.x_mid, again.x_mid) and torch.equal(points.traj, again.traj)


def test_shards_without_pairs_are_refused_with_the_field_to_set(made):
    root, _ = made
    with pytest.raises(PairsMissingError, match=r"no mixed-order pairs.*store_pairs: true"):
        load_calibration_points(root / "plain", 8)
    assert len(load_calibration_points(root / "plain", 8, pairs=False)) == 8


def test_store_pairs_needs_a_second_order_teacher(made, tmp_path):
    from saq_lightning.data import MixStepPhase, MixStepSchedule

    _root, module = made
    schedule = MixStepSchedule((MixStepPhase(10, 1, 1),))
    with pytest.raises(ValueError, match="store_pairs needs teacher_order 2"):
        generate_trajectories(module, schedule, tmp_path / "x", progress=False)


def test_pair_sides_put_each_role_where_it_belongs(made):
    from saq_lightning.alignment.ptq import PTQSettings, _sides

    root, _ = made
    p = load_calibration_points(root / "paired", 16, seed=3)
    fp_x, fp_t, q_x, q_t = _sides(p, PTQSettings(pair_roles="fp_second_order").reconstruction())
    assert torch.equal(q_x, p.x_s) and torch.equal(q_t, p.s)  # quantized at the grid point
    assert torch.equal(fp_x, p.x_mid) and torch.equal(fp_t, p.s_mid)  # FP at its intermediate point
    fp_x, fp_t, q_x, q_t = _sides(p, PTQSettings(pair_roles="fp_first_order").reconstruction())
    assert torch.equal(fp_x, p.x_s) and torch.equal(q_x, p.x_mid)


def test_same_input_on_grid_and_intermediate_points_gives_each_point_its_own_fp_output(made):
    from saq_lightning.alignment.ptq import PTQSettings, _sides

    root, _ = made
    p = load_calibration_points(root / "paired", 16, seed=3)
    rec = PTQSettings(objective="same_input", same_input_points="grid_and_intermediate").reconstruction()
    fp_x, fp_t, q_x, q_t = _sides(p, rec)
    assert torch.equal(fp_x, q_x) and torch.equal(fp_t, q_t)  # same input on both sides
    mid = torch.arange(16) % 2 == 1
    assert torch.equal(fp_x[mid], p.x_mid[mid]) and torch.equal(fp_t[mid], p.s_mid[mid])
    assert torch.equal(fp_x[~mid], p.x_s[~mid]) and torch.equal(fp_t[~mid], p.s[~mid])


def test_same_input_points_is_refused_for_mixed_order():
    from saq_lightning.alignment.ptq import PTQSettings

    with pytest.raises(ValueError, match="ptq.same_input_points is a same_input setting"):
        PTQSettings(same_input_points="grid_and_intermediate")
