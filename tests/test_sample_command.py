"""``sample`` -> ``evaluate`` end to end on the digits default, through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from saq_lightning.cli import main


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    out = tmp_path_factory.mktemp("fp")
    main(["sample", "--out", str(out), "--num_samples", "40", "--steps", "4", "--batch_size", "20",
          "--device", "cpu", "--grid_size", "20"])
    return out


@pytest.fixture(scope="module")
def evaluated(sampled):
    main(["evaluate", "--samples", str(sampled / "samples.npz"), "--device", "cpu"])
    return json.loads((sampled / "eval.json").read_text())


def test_sample_file_has_the_adm_layout_with_class_balanced_labels(sampled):
    with np.load(sampled / "samples.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["arr_0", "arr_1"]
        images, labels = data["arr_0"], data["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (40, 8, 8, 1)
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(40)]
    assert images.max() > 200 and images.min() < 50  # real digits: dark background, bright strokes


def test_sample_writes_a_grid_and_its_settings_and_removes_the_parts(sampled):
    assert Image.open(sampled / "grid.png").size == (10 * 8 * 4, 2 * 8 * 4)  # 20 samples, 10 per row, x4
    meta = json.loads((sampled / "samples.json").read_text())
    assert meta["settings"]["solver"] == "ddim" and meta["settings"]["steps"] == 4
    assert meta["settings"]["guidance_scale"] == 2.0  # the default for a class-conditional model
    assert meta["num_samples"] == 40 and meta["student"] == "fp"
    assert not (sampled / "parts").exists()


def test_evaluate_scores_the_digits_samples_against_the_real_digits(evaluated):
    m = evaluated["metrics"]
    assert set(m) == {"digits_fd", "digits_class_accuracy", "digits_precision", "digits_recall",
                      "digits_pixel_fd", "digits_pixel_precision", "digits_pixel_recall"}
    assert 0 < m["digits_pixel_fd"] < 20 and 0 <= m["digits_pixel_precision"] <= 1
    # the trained teacher, even at 4 DDIM steps: recognisable digits of the asked class
    assert 0 < m["digits_fd"] < 20
    assert m["digits_class_accuracy"] >= 0.8
    assert evaluated["reference"].startswith("builtin:digits")
    assert evaluated["sampling"]["steps"] == 4  # read from samples.json next to the samples


def test_evaluate_writes_a_markdown_table(sampled, evaluated):
    table = (sampled / "eval.md").read_text()
    assert "| FD (digits classifier) |" in table and "| class accuracy (digits classifier) |" in table


def test_sample_settings_fall_back_to_the_model_spec(tmp_path):
    out = tmp_path / "spec"
    main(["sample", "--out", str(out), "--model", "configs/models/digits.yaml", "--num_samples", "10",
          "--batch_size", "10", "--device", "cpu", "--grid_size", "0", "--steps", "2"])
    settings = json.loads((out / "samples.json").read_text())["settings"]
    assert settings["guidance_scale"] == 1.0  # configs/models/digits.yaml: sampling.guidance_scale 1.0
    assert not (out / "grid.png").exists()
