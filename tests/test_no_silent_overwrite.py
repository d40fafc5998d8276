"""No command silently replaces what an earlier run wrote: ``evaluate``, ``diagnose`` and ``fit``
refuse, name what differs and offer ``--overwrite`` (``sample`` and ``generate`` have their own
tests). Every refusal here goes through the command line: one message, exit code 2."""

from __future__ import annotations

import json

import pytest
from cli_run_helpers import run_main, tiny_fit_config
from test_training_helpers import save_tiny_teacher, write_tiny_shards

from saq_lightning.cli import main


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    main(["sample", "--out", str(out), "--num_samples", "20", "--steps", "2", "--batch_size", "20",
          "--device", "cpu", "--grid_size", "0"])
    return out / "samples.npz"


def test_evaluate_twice_is_refused_naming_what_differs(samples, capsys):
    base = ["evaluate", "--samples", str(samples), "--device", "cpu"]
    assert run_main(base + ["--metrics", "[digits_fd]"], capsys)[0] == 0
    first = json.loads(samples.with_name("eval.json").read_text())
    code, err = run_main(base + ["--metrics", "[digits_accuracy]"], capsys)
    assert code == 2
    assert "eval.json" in err and "metrics[0]: 'digits_fd' then, 'digits_accuracy' now" in err
    assert "--overwrite true" in err and "Traceback" not in err
    assert json.loads(samples.with_name("eval.json").read_text()) == first  # untouched
    assert run_main(base + ["--metrics", "[digits_accuracy]", "--overwrite", "true"], capsys)[0] == 0
    assert list(json.loads(samples.with_name("eval.json").read_text())["metrics"]) == ["digits_class_accuracy"]


def test_diagnose_twice_is_refused_and_overwrite_leaves_one_event_file(tmp_path, capsys):
    out = tmp_path / "diag"
    base = ["diagnose", "--out", str(out), "--student", "fp", "--num_samples", "2", "--orders", "[1]",
            "--device", "cpu"]
    assert run_main(base + ["--steps", "2"], capsys)[0] == 0
    code, err = run_main(base + ["--steps", "3"], capsys)
    assert code == 2 and "steps: 2 then, 3 now" in err and "diagnostics.json" in err
    assert json.loads((out / "diagnostics.json").read_text())["steps"] == 2
    assert run_main(base + ["--steps", "3", "--overwrite", "true"], capsys)[0] == 0
    assert json.loads((out / "diagnostics.json").read_text())["steps"] == 3
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1  # not two runs mixed


def test_fit_into_a_folder_of_an_earlier_run_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    spec = save_tiny_teacher(tmp_path / "teacher")
    shards = write_tiny_shards(spec, tmp_path / "shards")
    config = str(tiny_fit_config(tmp_path / "fit.yaml", spec, shards, tmp_path / "run", 2))
    assert run_main(["fit", "--config", config], capsys)[0] == 0
    ckpt = tmp_path / "run" / "ckpt"
    first = (ckpt / "last.ckpt").stat().st_mtime_ns
    code, err = run_main(["fit", "--config", config], capsys)
    assert code == 2 and "last.ckpt" in err and "--ckpt_path last" in err and "--overwrite true" in err
    assert (ckpt / "last.ckpt").stat().st_mtime_ns == first
    # a resume is never refused (also what an automatic SLURM requeue does)
    assert run_main(["fit", "--config", config, "--ckpt_path", "last", "--trainer.max_steps", "3"], capsys)[0] == 0
    assert run_main(["fit", "--config", config, "--overwrite", "true"], capsys)[0] == 0
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt"]  # no last-v1.ckpt
    assert sorted(p.name for p in (tmp_path / "run" / "tb").iterdir()) == ["version_0", "version_1", "version_2"]
