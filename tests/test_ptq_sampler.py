"""An SA-PTQ student is reconstructed for a named sampler: the default pair role follows it (a
first-order sampler takes ``fp_second_order``), a role that cancels or doubles the second-order
correction under it prints one line, ``student.ckpt`` records it and ``sample`` defaults to it."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
import yaml
from ptq_helpers import paired_shards, ptq_config

from saq_lightning.alignment.ptq import PTQSettings, resolve_roles
from saq_lightning.alignment.ptq_sampler import resolve_sampler
from saq_lightning.commands.ptq import ptq
from saq_lightning.commands.sample import sample
from saq_lightning.data import MixStepPhase

PHASES = [MixStepPhase(20, 1, 2), MixStepPhase(10, 1, 2)]


def sampler(solver, order=None, steps=None):
    return resolve_sampler(solver, order, steps, None, "time_uniform", 2.0, PHASES)


def test_steps_default_to_the_fewest_phase_steps_and_spacing_to_the_runs():
    got = sampler("dpm1")
    assert (got.solver, got.order, got.steps, got.spacing, got.guidance_scale) == ("dpm1", 1, 10, "time_uniform", 2.0)


def test_a_spacing_the_pairs_do_not_come_from_is_refused():
    with pytest.raises(ValueError, match="ptq.spacing 'logSNR': the calibration pairs come from the run's "
                                         "'time_uniform' grids"):
        resolve_sampler("dpm1", None, 10, "logSNR", "time_uniform", 1.0, PHASES)


@pytest.mark.parametrize(("solver", "order", "role"), [
    ("dpm1", None, "fp_second_order"), ("ddim", None, "fp_second_order"), ("dpm3", 1, "fp_second_order"),
    ("dpm2", None, "fp_first_order"), ("dpm2m", None, "fp_first_order"),
])
def test_the_default_role_follows_the_sampler_order(solver, order, role):
    rec, _ = resolve_roles(PTQSettings().reconstruction(), sampler(solver, order))
    assert rec.pair_roles == role


def test_fp_second_order_under_a_first_order_sampler_prints_nothing():
    _, note = resolve_roles(PTQSettings(pair_roles="fp_second_order").reconstruction(), sampler("dpm1"))
    assert note is None


@pytest.mark.parametrize(("role", "solver", "says"), [
    ("fp_second_order", "dpm2", "doubles the second-order correction"),
    ("fp_second_order", "plms", "doubles the second-order correction"),
    ("fp_first_order", "dpm1", "lags half a step"),
    ("fp_first_order", "dpm2", "cancels the second-order correction"),
    ("fp_first_order", "dpm++2m", "which a multistep solver never queries"),
])
def test_a_role_that_does_not_suit_the_sampler_prints_one_line_saying_why(role, solver, says):
    _, note = resolve_roles(PTQSettings(pair_roles=role).reconstruction(), sampler(solver))
    assert note is not None and "\n" not in note and says in note and sampler(solver).label() in note


def test_grid_only_brecq_under_a_second_order_sampler_names_the_control():
    _, note = resolve_roles(PTQSettings(objective="same_input").reconstruction(), sampler("dpm2"))
    assert note is not None and "same_input_points: grid_and_intermediate" in note
    _, none = resolve_roles(PTQSettings(objective="same_input").reconstruction(), sampler("dpm1"))
    assert none is None


def test_an_unknown_solver_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="ptq.solver must be one of"):
        PTQSettings(solver="dpm9")


def with_buckets(cfg, n_buckets):
    data = yaml.safe_load(cfg.read_text())
    data["model"]["init_args"]["policy"]["n_buckets"] = n_buckets
    data["mixstep"]["n_buckets"] = n_buckets
    cfg.write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def dpm2_student(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptq_sampler")
    spec, shards = paired_shards(root)
    cfg = ptq_config(root / "ptq.yaml", spec, shards, root / "out", pair_roles="fp_first_order",
                     solver="dpm2", steps=10)
    with_buckets(cfg, 20)  # room for the 10 grid points and their 10 intermediate points
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        ptq(["--config", str(cfg), "--progress", "false", "--accelerator", "cpu"])
    return spec, root / "out" / "student.ckpt", printed.getvalue(), shards


def test_the_ptq_run_prints_the_role_line_once_and_records_the_sampler(dpm2_student):
    _, ckpt, printed, _ = dpm2_student
    lines = [line for line in printed.splitlines() if line.startswith("ptq: the student is for")]
    assert len(lines) == 1 and "cancels the second-order correction" in lines[0]
    record = torch.load(ckpt, map_location="cpu", weights_only=True)["ptq"]
    assert record["sampler"] == {"solver": "dpm2", "order": 2, "order_override": None, "steps": 10,
                                 "spacing": "time_uniform", "guidance_scale": 1.0}
    assert record["settings"]["pair_roles"] == "fp_first_order"


def test_sample_defaults_to_the_ptq_students_sampler(dpm2_student, tmp_path, capsys):
    spec, ckpt, *_ = dpm2_student
    sample(str(tmp_path / "s"), model=spec, student=str(ckpt), num_samples=4, batch_size=4, device="cpu",
           grid_size=0)
    got = json.loads((tmp_path / "s" / "samples.json").read_text())["settings"]
    assert (got["solver"], got["order"], got["steps"], got["spacing"], got["guidance_scale"]) == (
        "dpm2", None, 10, "time_uniform", 1.0)
    assert "note:" not in capsys.readouterr().out
    sample(str(tmp_path / "o"), model=spec, student=str(ckpt), num_samples=4, batch_size=4, device="cpu",
           grid_size=0, solver="dpm1")
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [(f"note: sampling {ckpt} with solver 'dpm1' (trained: 'dpm2'); it was aligned to the "
                      f"trained sampler")]


def test_same_input_on_grid_and_intermediate_points_runs_end_to_end(tmp_path, capsys):
    spec, shards = paired_shards(tmp_path)
    cfg = ptq_config(tmp_path / "ptq.yaml", spec, shards, tmp_path / "out", objective="same_input",
                     same_input_points="grid_and_intermediate", solver="dpm2", iters=10, act_iters=0)
    summary = ptq(["--config", str(cfg), "--progress", "false", "--accelerator", "cpu"])
    assert summary["complete"]
    out = capsys.readouterr().out
    assert "ptq: the student is for dpm2@10 (time_uniform, cfg 1) (same_input, same_input_points " \
           "grid_and_intermediate)" in out
    # the tiny policy's 10 buckets hold the 10 grid points only: said once, and the run goes on
    assert out.count("ptq: the intermediate points share their nearest grid point's activation bucket: "
                     "10 intermediate points need activation buckets of their own and 10 buckets "
                     "leave 0 after the 10 grid points; use n_buckets >= 20") == 1
    record = torch.load(tmp_path / "out" / "student.ckpt", map_location="cpu", weights_only=True)["ptq"]
    assert record["settings"]["same_input_points"] == "grid_and_intermediate"


def test_an_fp_first_order_student_has_buckets_of_its_own_at_the_pairs_intermediate_points(dpm2_student):
    from saq_lightning.data.calibration_points import load_calibration_points
    from saq_lightning.quant.bucket_map import BucketMap
    from saq_lightning.sampling import DiscreteSchedule

    spec, ckpt, _, shards = dpm2_student
    bmap = BucketMap.from_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["saq"]["bucket_map"])
    points = load_calibration_points(shards, 24, seed=0)
    schedule = DiscreteSchedule.from_config(**spec.schedule)
    mids = schedule.model_timestep(points.s_mid)
    known = torch.tensor(bmap.points()[0], dtype=torch.float64)
    assert bool(((mids[:, None] - known[None, :]).abs().min(dim=1).values <= bmap.tolerance).all())
    grid_buckets = {b for row in bmap.tables.values() for b in row}
    assert not set(bmap.lookup(mids).tolist()) & grid_buckets  # none borrowed from a grid point


def test_an_fp_first_order_students_intermediate_buckets_are_calibrated_from_their_own_states(dpm2_student):
    _, ckpt, _, _ = dpm2_student
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    flags = {k: v for k, v in state.items() if k.endswith("a_quant.calibrated")}
    assert flags and all(bool(v.all()) for v in flags.values())  # 20 of 20: none filled from a grid point
    meta = json.loads((ckpt.parent / "ptq_state" / "meta.json").read_text())
    assert meta["calibration"] == "grid and intermediate points"  # an older state is not resumed
