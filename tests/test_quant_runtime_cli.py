"""``sample --runtime fake|int`` and ``evaluate`` on its samples (digits, through the CLI)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from saq_lightning.cli import main
from saq_lightning.models import ModelSpec
from saq_lightning.quant import export_student
from saq_lightning.students import load_sampling_model

ARGS = ["--num_samples", "20", "--steps", "4", "--batch_size", "10", "--device", "cpu", "--grid_size", "0"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    net = load_sampling_model(ModelSpec(kind="digits"), "naive:w8a8", calibration_samples=8,
                              calibration_method="minmax")
    return export_student(net.unet, tmp_path_factory.mktemp("w8a8") / "export")


@pytest.fixture(scope="module")
def sampled(export, tmp_path_factory):
    out = {}
    for runtime in ("fake", "int"):
        folder = tmp_path_factory.mktemp(runtime)
        main(["sample", "--out", str(folder), "--student", str(export), "--runtime", runtime, *ARGS])
        out[runtime] = folder
    out["fp"] = tmp_path_factory.mktemp("fp")
    main(["sample", "--out", str(out["fp"]), *ARGS])
    return out


def _images(folder):
    with np.load(folder / "samples.npz", allow_pickle=False) as data:
        return data["arr_0"].astype(np.int16), data["arr_1"]


def test_int_runtime_samples_are_the_fake_quant_students_samples(sampled):
    """Same seeds, same student: the pixels agree to a level or two. Not bit-identical: the fp32
    sum order differs (the runtime sums integers exactly), which moves an activation lying within
    fp32 rounding of a rounding boundary to the next code; over a sampling run such flips cascade
    (measured: ~1% of the codes of a call by the last step). Bound: a mean difference under 2 levels
    (measured 0.98, and 0.88 after the reservoir calibration changed the export) and under a third of
    what quantization itself changes (fake vs FP, measured 5.9); a single pixel may move further where
    a flip cascades (max measured 16, then 18 levels of 255): at most 32."""
    (fake, labels_f), (integer, labels_i) = _images(sampled["fake"]), _images(sampled["int"])
    fp, _ = _images(sampled["fp"])
    assert np.array_equal(labels_f, labels_i)
    diff = np.abs(fake - integer)
    print(f"pixel |fake - int|: mean {diff.mean():.3f}, max {diff.max()}; |fake - fp| mean {np.abs(fake - fp).mean():.3f}")
    assert diff.mean() < 2.0 and diff.max() <= 32
    assert diff.mean() < np.abs(fake - fp).mean() / 3


def test_samples_json_records_the_runtime(sampled):
    assert json.loads((sampled["int"] / "samples.json").read_text())["runtime"] == "int"


def test_evaluate_scores_the_int_runtime_samples(sampled):
    main(["evaluate", "--samples", str(sampled["int"] / "samples.npz"), "--device", "cpu"])
    metrics = json.loads((sampled["int"] / "eval.json").read_text())["metrics"]
    assert 0 < metrics["digits_fd"] < 100 and 0 <= metrics["digits_class_accuracy"] <= 1


def test_int_runtime_of_a_naive_student_goes_through_a_temporary_export(tmp_path):
    main(["sample", "--out", str(tmp_path), "--student", "naive:w4a4", "--runtime", "int", *ARGS])
    with np.load(tmp_path / "samples.npz", allow_pickle=False) as data:
        assert data["arr_0"].shape == (20, 8, 8, 1)


def _one_line_error(args, capsys) -> str:
    """A user error: exit code 2 and one ``error:`` line, no traceback."""
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err, err
    return next(line for line in err.splitlines() if line.startswith("error:"))


def test_runtime_int_without_a_student_is_an_error(tmp_path, capsys):
    line = _one_line_error(["sample", "--out", str(tmp_path), "--runtime", "int", *ARGS], capsys)
    assert "--runtime int needs a quantized --student" in line


def test_an_unknown_runtime_is_an_error(export, tmp_path, capsys):
    line = _one_line_error(["sample", "--out", str(tmp_path), "--student", str(export), "--runtime", "int4", *ARGS],
                           capsys)
    assert "--runtime 'int4': expected one of ['fake', 'int', 'weight_only']" in line


@pytest.mark.parametrize("runtime", ["fake", "int"])
def test_a_bit_flipped_export_is_one_line_under_every_runtime(export, tmp_path, capsys, runtime):
    """Found by the bad-input probe: under ``--runtime int`` the digest mismatch was re-raised as a
    plain ValueError (43-line traceback, exit 1); under ``fake`` it was already one line."""
    copy = tmp_path / "export"
    shutil.copytree(export, copy)
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-100] ^= 1  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    line = _one_line_error(["sample", "--out", str(tmp_path / "s"), "--student", str(copy), "--runtime", runtime,
                            *ARGS], capsys)
    assert f"{weights}: its SHA-256 is not the one" in line
