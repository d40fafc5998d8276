"""``sample --student <ckpt>`` samples the student as it was trained: guidance scale, solver and
order, steps and spacing come from the checkpoint; an option that departs prints one line."""

from __future__ import annotations

import json

import pytest
from cli_run_helpers import tiny_fit_config
from test_training_helpers import save_tiny_teacher, write_tiny_shards

from saq_lightning.cli import main
from saq_lightning.commands.sample import sample


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    spec = save_tiny_teacher(root / "teacher")
    shards = write_tiny_shards(spec, root / "shards", guidance_scale=2.0, spacing="logSNR")
    config = tiny_fit_config(root / "fit.yaml", spec, shards, root / "run", 1, guidance_scale=2.0,
                             spacing="logSNR")
    main(["fit", "--config", str(config)])
    return spec, root / "run" / "ckpt" / "last.ckpt"


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
