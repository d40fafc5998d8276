"""Errors for people: a known user error is one short message and exit code 2, without a
traceback (``--traceback`` or ``SAQ_TRACEBACK=1`` shows it); a config typo names the bad key and
the nearest valid ones instead of printing the usage text. Real ``python -m saq_lightning``
processes, as a user runs them."""

from __future__ import annotations

from argparse import ArgumentError
from pathlib import Path

import pytest
import yaml
from cli_run_helpers import REPO, run_cli

from saq_lightning.cli import main

DIGITS = REPO / "configs" / "digits_w4a4.yaml"


def typo_config(tmp_path: Path) -> Path:
    config = yaml.safe_load(DIGITS.read_text())
    init = config["model"]["init_args"]
    init["guidance_scal"] = init.pop("guidance_scale")
    init["teacher"] = str(REPO / "configs" / "models" / "digits.yaml")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_config_typo_is_one_line_naming_the_key_and_the_nearest_valid_one(tmp_path):
    path = typo_config(tmp_path)
    done = run_cli(["fit", "--config", str(path)])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0] == (f"error: unknown key 'guidance_scal' in model (config {path}); "
                        f"nearest valid: guidance_scale, guidance_alignment")  # closest first
    assert len(lines) == 2 and "--traceback" in lines[1]
    assert "usage:" not in done.stderr and "Traceback" not in done.stderr


def test_traceback_flag_and_variable_raise_the_error_itself(tmp_path, monkeypatch):
    path = typo_config(tmp_path)
    with pytest.raises(ArgumentError, match="guidance_scal"):
        main(["fit", "--config", str(path), "--traceback"])
    monkeypatch.setenv("SAQ_TRACEBACK", "1")
    with pytest.raises(ArgumentError, match="guidance_scal"):
        main(["fit", "--config", str(path)])


@pytest.mark.parametrize(("args", "message"), [
    (["fit", "--config", "no/such.yaml"], "error: File does not exist:"),
    (["fit", "--config", str(DIGITS), "--trainer.max_stepz", "3"],
     "error: unknown option --trainer.max_stepz; did you mean --trainer.max_steps"),
    (["fit", "--config", str(DIGITS), "--model.init_args.guidance_scale", "abc"],
     "error: model.guidance_scale: expected float, got 'abc'"),
    (["sample", "--out", "x", "--stepz", "3"], "error: unknown option --stepz; did you mean --steps"),
], ids=["missing-config", "option-typo", "wrong-type", "command-option-typo"])
def test_bad_arguments_exit_2_with_one_message(args, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith(message) and len(err.strip().splitlines()) == 2, err


def test_bare_command_lists_every_subcommand_under_its_real_name(capsys):
    with pytest.raises(SystemExit) as stop:
        main([])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert out.startswith("usage: python -m saq_lightning")
    for name in ("fit", "validate", "generate", "sample", "evaluate", "diagnose", "demo"):
        assert f"  {name}" in out


@pytest.mark.parametrize(("content", "says"), [(b"", "EOFError"), (b"not a checkpoint\n", "Unsupported operand")],
                         ids=["empty", "text"])
def test_an_unreadable_student_file_is_one_line_naming_it(tmp_path, capsys, content, says):
    """A save cut short (empty) or another file under a .ckpt name: not a traceback, and not the
    advice to load it with weights_only=False."""
    student = tmp_path / "last.ckpt"
    student.write_bytes(content)
    with pytest.raises(SystemExit) as stop:
        main(["sample", "--student", str(student), "--out", str(tmp_path / "s"), "--num_samples", "2",
              "--steps", "2", "--device", "cpu", "--grid_size", "0"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err and "weights_only" not in err
    assert f"error: {student}: not a readable PyTorch file" in err and says in err
