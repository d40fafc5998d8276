"""``sample --student <ckpt>`` samples the student as it was trained: guidance scale, solver and
order, steps and spacing come from the checkpoint; an option that departs prints one line."""

from __future__ import annotations

import json

import pytest
import torch
from cli_run_helpers import fit_tiny_checkpoint

from saq_lightning.commands.sample import sample


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return fit_tiny_checkpoint(tmp_path_factory.mktemp("trained"))


def settings(out):
    return json.loads((out / "samples.json").read_text())["settings"]


def test_defaults_are_the_trained_sampler(trained, tmp_path, capsys):
    spec, ckpt = trained
    sample(str(tmp_path / "s"), model=spec, student=str(ckpt), num_samples=4, batch_size=4,
           device="cpu", grid_size=0)
    got = settings(tmp_path / "s")
    # phases (10 steps, order 1) and (5, 1) against DPM-Solver-2; CFG 2 on a logSNR grid
    assert (got["solver"], got["steps"], got["spacing"], got["guidance_scale"]) == ("dpm1", 10, "logSNR", 2.0)
    assert "note:" not in capsys.readouterr().out


def test_an_override_that_departs_prints_one_line(trained, tmp_path, capsys):
    spec, ckpt = trained
    sample(str(tmp_path / "s"), model=spec, student=str(ckpt), num_samples=4, batch_size=4,
           device="cpu", grid_size=0, guidance_scale=1.0, steps=5)
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [(f"note: sampling {ckpt} with guidance_scale 1.0 (trained: 2.0); it was aligned "
                     f"to the trained sampler")]  # 5 steps is a trained phase: no note for it
    assert settings(tmp_path / "s")["guidance_scale"] == 1.0


def _with_first_phase(ckpt, out, **fields):
    """A copy of the fit checkpoint whose first mixstep phase has ``fields`` (as a run of that
    phase would have saved it)."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["mixstep"]["phases"][0].update(fields)  # where the schedule is read from
    torch.save(checkpoint, out)
    return out


@pytest.mark.parametrize(("fields", "solver", "order"), [
    ({"student_solver": "plms", "student_order": 3, "teacher_order": 4}, "plms", 3),
    ({"student_solver": "dpm++_multistep", "student_order": 2}, "dpm++2m", None),
    ({"student_solver": "dpm_multistep", "student_order": 2}, "dpm2m", None),
])
def test_a_multistep_student_samples_with_its_own_solver(trained, tmp_path, capsys, fields, solver, order):
    # a PLMS-3 student must not be sampled with singlestep DPM-Solver-3 (3x the model calls), nor a
    # DPM++(2M) student with singlestep DPM-2
    spec, ckpt = trained
    student = _with_first_phase(ckpt, tmp_path / "student.ckpt", **fields)
    sample(str(tmp_path / "s"), model=spec, student=str(student), num_samples=4, batch_size=4,
           device="cpu", grid_size=0)
    got = settings(tmp_path / "s")
    assert (got["solver"], got["order"], got["steps"]) == (solver, order, 10)
    assert "note:" not in capsys.readouterr().out


def test_plms_student_sampled_at_plms4_prints_the_order(trained, tmp_path, capsys):
    spec, ckpt = trained
    student = _with_first_phase(ckpt, tmp_path / "student.ckpt", student_solver="plms", student_order=3,
                                teacher_order=4)
    sample(str(tmp_path / "s"), model=spec, student=str(student), num_samples=4, batch_size=4,
           device="cpu", grid_size=0, solver="plms")
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == [(f"note: sampling {student} with order plms's default (trained: 3); it was aligned "
                      f"to the trained sampler")]


def test_a_checkpoint_written_before_the_mixstep_block_gives_its_trained_sampler_from_the_callback_state():
    """Checkpoints of the base commit record the schedule only in MixStepCallback's state."""
    from pathlib import Path

    from saq_lightning.students.trained_sampler import trained_sampler_of

    contents = torch.load(Path(__file__).parent / "data" / "base_checkpoint.ckpt", map_location="cpu",
                          weights_only=True)
    assert "mixstep" not in contents["hyper_parameters"]
    assert trained_sampler_of(contents) == {"guidance_scale": 1.0, "spacing": "time_uniform", "solver": "dpm1",
                                            "student_order": 1, "steps": 10, "trained_steps": [5, 10]}
