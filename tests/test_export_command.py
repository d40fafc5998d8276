"""``python -m saq_lightning export``: a fit checkpoint, a PTQ checkpoint or ``naive:<policy>`` to
the integer export folder that ``sample --runtime int`` and ``load_runtime`` read; an existing
folder is refused (one line, exit 2) unless ``--overwrite true``."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from cli_run_helpers import fit_tiny_checkpoint
from ptq_helpers import paired_shards, ptq_config
from test_training_helpers import tiny_spec

from saq_lightning.cli import main
from saq_lightning.commands.export import export
from saq_lightning.commands.ptq import ptq
from saq_lightning.quant import load_exported
from saq_lightning.quant.runtime import load_runtime
from saq_lightning.students import load_student

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
T = torch.tensor([10, 250, 600, 990])
LABELS = torch.tensor([0, 3, 7, 10])


@pytest.fixture(scope="module")
def fit_ckpt(tmp_path_factory):
    """A real ``fit`` checkpoint of the tiny teacher (one step, CFG 2 on a logSNR grid)."""
    return fit_tiny_checkpoint(tmp_path_factory.mktemp("fit"))[1]


@pytest.fixture(scope="module")
def ptq_ckpt(tmp_path_factory):
    """A real ``ptq`` checkpoint (AdaRound, hard codes) of the tiny teacher."""
    root = tmp_path_factory.mktemp("ptq")
    spec, shards = paired_shards(root)
    ptq(["--config", str(ptq_config(root / "ptq.yaml", spec, shards, root / "out")), "--progress", "false",
         "--accelerator", "cpu"])
    return root / "out" / "student.ckpt"


def eps(unet) -> torch.Tensor:
    with torch.no_grad():
        return unet(X, T, class_labels=LABELS).sample


def test_a_fit_checkpoint_exports_to_a_folder_that_reproduces_its_student(fit_ckpt, tmp_path, capsys):
    """The export holds the student's integer codes and tables; dequantized it computes what the
    fake-quant student computes: the same expression on the same codes (measured: identical, on
    values of order 1; bound 1e-4 for summation order, as for every export round trip in the tests)."""
    out = tmp_path / "export"
    main(["export", "--student", str(fit_ckpt), "--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert f"wrote {out}: checkpoint student {fit_ckpt}, policy" in printed
    assert "% of conv/linear MACs" in printed and "BOPs per sample" in printed  # coverage
    assert "runtime on cpu, requested int8" in printed  # the runtime report
    assert "note: trained for --solver dpm1, --steps 10 (trained: [5, 10]), --spacing logSNR, --guidance_scale 2.0" in printed
    exported, student = eps(load_exported(out)), eps(load_student(fit_ckpt).unet)
    print(f"max |exported - student| {(exported - student).abs().max():.1e}, max |student| {student.abs().max():.1f}")
    torch.testing.assert_close(exported, student, atol=1e-4, rtol=0)


def test_a_ptq_checkpoint_exports_its_hard_rounded_codes(ptq_ckpt, tmp_path):
    student = load_student(ptq_ckpt).unet
    exported = load_exported(export(str(ptq_ckpt), str(tmp_path / "export"), device="cpu"))
    for name, layer in student.quant_layers():
        assert torch.equal(dict(exported.quant_layers())[name].weight_codes(), layer.weight_codes()), name


def test_a_naive_student_exports_the_model_it_is_given(fit_ckpt, tmp_path):
    """``naive:<policy>`` quantizes ``--model`` (here the tiny teacher, not the default digits UNet)."""
    spec_yaml = tmp_path / "tiny.yaml"
    teacher = fit_ckpt.parents[2] / "teacher"
    spec_yaml.write_text(json.dumps({k: v for k, v in asdict(tiny_spec(teacher)).items() if v is not None}))
    out = tmp_path / "export"
    main(["export", "--student", "naive:w8a8", "--model", str(spec_yaml), "--out", str(out),
          "--calibration_samples", "4", "--device", "cpu"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["policy"]["name"] == "w8a8"
    assert manifest["model"]["config"]["block_out_channels"] == json.loads((teacher / "config.json").read_text())[
        "block_out_channels"]
    assert load_runtime(out, arithmetic="weight_only").runtime_report.counts()["weight_only"] > 0


def test_an_existing_out_is_refused_in_one_line_and_left_as_it_was(fit_ckpt, tmp_path, capsys):
    out = tmp_path / "export"
    export(str(fit_ckpt), str(out), device="cpu")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--student", "naive:w4a4", "--out", str(out), "--calibration_samples", "4"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (f"error: export: {out} already exists; use another --out, or pass --overwrite true to "
                      f"replace it")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_overwrite_replaces_the_old_export_and_leaves_nothing_aside(fit_ckpt, tmp_path):
    out = tmp_path / "export"
    export(str(fit_ckpt), str(out), device="cpu")
    export("naive:w8a8", str(out), calibration_samples=4, device="cpu", overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["policy"]["name"] == "w8a8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging or set-aside folder left


@pytest.mark.parametrize("student", ["fp", "export"])
def test_the_fp_model_or_an_export_folder_is_refused_as_a_student(student, fit_ckpt, tmp_path, capsys):
    if student == "export":
        student = export(str(fit_ckpt), str(tmp_path / "first"), device="cpu")
        capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--student", student, "--out", str(tmp_path / "second")])
    assert exit_.value.code == 2
    assert "give a training or PTQ checkpoint or naive:<policy>" in capsys.readouterr().err.splitlines()[0]
    assert not (tmp_path / "second").exists()
