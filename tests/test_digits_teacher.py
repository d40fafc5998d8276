"""The shipped digits teacher and classifier load from the package and behave as recorded."""

import json

import pytest
import torch

from saq_lightning.metrics.digits_classifier import load_digits_classifier
from saq_lightning.models.digits import (
    DIGITS_UNET_CONFIG,
    build_digits_unet,
    default_teacher_path,
    load_digits_teacher,
    save_weights_with_sidecar,
)


def test_shipped_teacher_is_small_and_has_its_config_beside_it():
    path = default_teacher_path()
    assert path.stat().st_size < 5 * 2**20
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["unet_config"] == DIGITS_UNET_CONFIG
    assert meta["schedule_config"]["num_train_timesteps"] == 1000


def test_shipped_teacher_reproduces_recorded_output():
    unet, _ = load_digits_teacher()
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(4, 1, 8, 8, generator=g)
    t = torch.tensor([0, 250, 500, 999])
    y = torch.tensor([0, 3, 7, 10])  # 10 = null class
    with torch.no_grad():
        out = unet(x, t, class_labels=y).sample
    # recorded when the weights were shipped; float32 CPU kernels agree to ~1e-5
    recorded_sums = torch.tensor([21.595212, 35.628737, -4.979440, -1.064920], dtype=torch.float64)
    torch.testing.assert_close(out.double().sum(dim=(1, 2, 3)), recorded_sums, rtol=0, atol=2e-3)
    recorded_row = torch.tensor([1.5478678, -0.3283157, 0.8173877, -0.2034296])
    torch.testing.assert_close(out[0, 0, 0, :4], recorded_row, rtol=0, atol=1e-4)


def test_teacher_is_frozen_after_loading():
    unet, _ = load_digits_teacher()
    assert not unet.training
    assert all(not p.requires_grad for p in unet.parameters())


def test_missing_teacher_file_names_the_path_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="digits_teacher.yaml"):
        load_digits_teacher(tmp_path / "nope.safetensors")


def test_weights_of_another_architecture_are_rejected(tmp_path):
    small = build_digits_unet({**DIGITS_UNET_CONFIG, "block_out_channels": [16, 32, 32]})
    path = tmp_path / "t.safetensors"
    save_weights_with_sidecar(small.state_dict(), path, {"unet_config": DIGITS_UNET_CONFIG, "schedule_config": {}})
    with pytest.raises(ValueError, match="do not match"):
        load_digits_teacher(path)


def test_exporting_over_existing_weights_is_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    unet = build_digits_unet()
    save_weights_with_sidecar(unet.state_dict(), path, {"a": 1})
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        save_weights_with_sidecar(unet.state_dict(), path, {"a": 2})
    assert path.read_bytes() == before


def test_shipped_classifier_is_accurate_on_held_out_digits():
    from saq_lightning.data.digits import digits_split

    clf, meta = load_digits_classifier()
    x, y = digits_split("val")
    with torch.no_grad():
        acc = (clf(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.95
    assert abs(acc - meta["val_acc"]) < 1e-6
