"""Which model ``sample``/``diagnose`` run: FP, a naive post-training student, an integer export,
a fake-quant training checkpoint."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

from saq_lightning.metrics.sample_generation import SamplerSetting, generate_images
from saq_lightning.models import ModelSpec, build_model
from saq_lightning.quant import QuantizedUNet, export_student
from saq_lightning.seeding import evaluation_noise
from saq_lightning.students import StudentRef, load_sampling_model

SPEC = ModelSpec(kind="digits")
SETTING = SamplerSetting("ddim", steps=3, guidance_scale=2.0)
HAS_STUDENT_LOADING = importlib.util.find_spec("saq_lightning.students.checkpoint") is not None


@pytest.fixture(scope="module")
def teacher():
    return build_model(SPEC)


@pytest.fixture(scope="module")
def naive(teacher):
    return load_sampling_model(SPEC, "naive:w4a4", calibration_samples=8, teacher=teacher, calibration_method="minmax")


def draw(model, n: int = 10) -> torch.Tensor:
    return generate_images(model, evaluation_noise(0, range(n), model.sample_shape), torch.arange(n) % 10, SETTING)


def test_naive_student_is_a_calibrated_w4a4_quantization_of_the_teacher(teacher, naive):
    assert isinstance(naive.unet, QuantizedUNet)
    assert naive.schedule_config == teacher.schedule_config and naive.conditioner is teacher.conditioner
    fp, q = draw(teacher), draw(naive)
    assert torch.isfinite(q).all()
    assert 0 < (fp - q).abs().mean() < 0.5  # a different, still digit-like sample (values in [-1, 1])


def test_integer_export_samples_like_its_fake_quant_student(naive, tmp_path):
    export_student(naive.unet, tmp_path / "export")
    exported = load_sampling_model(SPEC, str(tmp_path / "export"))
    torch.testing.assert_close(draw(exported), draw(naive), atol=1e-4, rtol=0)
    assert StudentRef.parse(str(tmp_path / "export")).identity()["kind"] == "export"


def test_a_checkpoint_path_is_loaded_through_load_student(naive, tmp_path, monkeypatch):
    from saq_lightning.students import ref

    ckpt = tmp_path / "last.ckpt"
    ckpt.write_bytes(b"stand-in")
    seen = []
    monkeypatch.setattr(ref, "read_checkpoint", lambda path: {"read": str(path)})
    monkeypatch.setattr(ref, "student_from_contents", lambda contents, path: seen.append(contents["read"]) or naive)
    assert load_sampling_model(SPEC, str(ckpt)) is naive
    assert seen == [str(ckpt)]


@pytest.mark.skipif(not HAS_STUDENT_LOADING, reason="saq_lightning.students.checkpoint is not available")
def test_a_real_training_checkpoint_samples_like_the_student_it_holds(naive, tmp_path):
    from saq_lightning.alignment.checkpointing import identity, student_state_dict

    ckpt = tmp_path / "student.ckpt"
    torch.save({"saq": identity(dataclasses.asdict(SPEC), naive.unet.policy.to_dict()),
                "state_dict": student_state_dict(naive.unet)}, ckpt)
    torch.testing.assert_close(draw(load_sampling_model(SPEC, str(ckpt))), draw(naive), atol=1e-5, rtol=0)


def test_an_export_folder_without_manifest_and_a_missing_path_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not an integer export"):
        load_sampling_model(SPEC, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"student '.*nope.ckpt' not found: give a training checkpoint"):
        load_sampling_model(SPEC, str(tmp_path / "nope.ckpt"))
