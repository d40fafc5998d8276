"""``ptq`` never replaces a ``student.ckpt`` of other settings silently: once ``ptq_state/`` is gone
(as ptq's own advice for a changed config says), a run of other settings is refused naming what
differs, unless ``--overwrite true``; a rerun of the same settings is not refused."""

from __future__ import annotations

import shutil

import torch
from cli_run_helpers import run_main
from ptq_helpers import paired_shards, ptq_config

FLAGS = ["--progress", "false", "--accelerator", "cpu"]


def test_a_student_of_other_settings_is_replaced_only_with_overwrite(tmp_path, capsys):
    spec, shards = paired_shards(tmp_path)
    cfg = str(ptq_config(tmp_path / "ptq.yaml", spec, shards, tmp_path / "out", iters=10, act_iters=0))
    student = tmp_path / "out" / "student.ckpt"
    assert run_main(["ptq", "--config", cfg, *FLAGS], capsys)[0] == 0
    first = student.read_bytes()
    shutil.rmtree(tmp_path / "out" / "ptq_state")
    code, err = run_main(["ptq", "--config", cfg, "--ptq.iters", "5", *FLAGS], capsys)
    assert code == 2 and "student.ckpt already exists" in err and "ptq.iters: 10 then, 5 now" in err, err
    assert "--overwrite true" in err and student.read_bytes() == first
    assert run_main(["ptq", "--config", cfg, "--ptq.iters", "5", "--overwrite", "true", *FLAGS], capsys)[0] == 0
    assert torch.load(student, weights_only=True)["ptq"]["settings"]["iters"] == 5
    shutil.rmtree(tmp_path / "out" / "ptq_state")
    code, err = run_main(["ptq", "--config", cfg, "--ptq.iters", "5", *FLAGS], capsys)
    assert code == 0, err  # same settings: a rerun
