"""``sample`` never leaves a result that no longer describes its samples: a student that produces
NaN is an error (not black images with exit 0), and ``--overwrite`` removes the ``eval.json`` /
``eval.md`` that scored the replaced samples. Through the command line (exit 2, one message)."""

from __future__ import annotations

import json

import torch
from cli_run_helpers import run_main, tiny_fit_config
from test_training_helpers import save_tiny_teacher, write_tiny_shards

from saq_lightning.alignment.checkpointing import add_tensor_digest


def test_a_student_that_produces_nan_is_an_error_and_writes_no_samples(tmp_path, capsys):
    spec = save_tiny_teacher(tmp_path / "teacher")
    shards = write_tiny_shards(spec, tmp_path / "shards")
    config = tiny_fit_config(tmp_path / "fit.yaml", spec, shards, tmp_path / "run", 1)
    assert run_main(["fit", "--config", str(config)], capsys)[0] == 0
    ckpt = torch.load(tmp_path / "run" / "ckpt" / "last.ckpt", weights_only=True)
    for key, value in ckpt["state_dict"].items():
        if "lora" in key:
            value.fill_(float("nan"))  # a diverged training
    nan_student = tmp_path / "nan.ckpt"
    torch.save(add_tensor_digest(ckpt), nan_student)  # a genuine checkpoint of a diverged run
    out = tmp_path / "samples"
    code, err = run_main(["sample", "--student", str(nan_student), "--out", str(out), "--num_samples", "4",
                     "--steps", "2", "--batch_size", "4", "--device", "cpu", "--grid_size", "0"], capsys)
    assert code == 2 and "NaN/inf in 4 of the 4 samples of chunk 0" in err and "Traceback" not in err, err
    assert not (out / "samples.npz").exists()


def test_sample_overwrite_removes_the_results_of_the_old_samples(tmp_path, capsys):
    out = tmp_path / "samples"
    base = ["sample", "--out", str(out), "--num_samples", "20", "--batch_size", "20", "--device", "cpu",
            "--grid_size", "0"]
    assert run_main(base + ["--steps", "2"], capsys)[0] == 0
    assert run_main(["evaluate", "--samples", str(out / "samples.npz"), "--metrics", "[digits_fd]",
                "--device", "cpu"], capsys)[0] == 0
    assert (out / "eval.json").is_file() and (out / "eval.md").is_file()
    assert run_main(base + ["--steps", "3", "--overwrite", "true"], capsys)[0] == 0
    assert not (out / "eval.json").exists() and not (out / "eval.md").exists()
    assert json.loads((out / "samples.json").read_text())["settings"]["steps"] == 3
    # the new samples are scored without --overwrite: nothing of the old run is left to refuse
    assert run_main(["evaluate", "--samples", str(out / "samples.npz"), "--metrics", "[digits_fd]",
                "--device", "cpu"], capsys)[0] == 0
