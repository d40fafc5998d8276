"""A student checkpoint records its teacher's weights and refuses others unless told to transfer."""

from __future__ import annotations

import pytest
import torch
from test_training_helpers import save_tiny_teacher, tiny_module

from saq_lightning.alignment.checkpointing import CheckpointMismatchError, teacher_fingerprint
from saq_lightning.models import build_model
from saq_lightning.quant import trainable_state_dict
from saq_lightning.students import load_student


@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory):
    """Two weight files of the same architecture (seeds 0 and 1) and a checkpoint trained on the first."""
    root = tmp_path_factory.mktemp("teachers")
    spec_a, spec_b = save_tiny_teacher(root / "a", seed=0), save_tiny_teacher(root / "b", seed=1)
    module = tiny_module(spec_a)
    module.calibrate_student()
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    path = root / "student.ckpt"
    torch.save(ckpt, path)
    return spec_a, spec_b, path, ckpt


def test_the_fingerprint_tells_weight_files_apart(two_teachers):
    spec_a, spec_b, _, ckpt = two_teachers
    fa, fb = teacher_fingerprint(build_model(spec_a)), teacher_fingerprint(build_model(spec_b))
    assert fa != fb
    assert ckpt["saq"]["teacher_fingerprint"] == fa == teacher_fingerprint(build_model(spec_a))


def test_loading_the_student_onto_other_teacher_weights_is_refused(two_teachers):
    _, spec_b, path, ckpt = two_teachers
    with pytest.raises(CheckpointMismatchError, match=r"trained against teacher weights with "
                                                      r"fingerprint [0-9a-f]{32}.*allow_teacher_transfer"):
        load_student(path, teacher_weights=spec_b.weights)
    with pytest.raises(CheckpointMismatchError, match="fingerprint"):
        tiny_module(spec_b).on_load_checkpoint(ckpt)


def test_a_deliberate_transfer_loads_the_trained_state(two_teachers):
    _, spec_b, path, ckpt = two_teachers
    moved = load_student(path, teacher_weights=spec_b.weights, allow_teacher_transfer=True)
    original = load_student(path)
    a, b = trainable_state_dict(moved.unet), trainable_state_dict(original.unet)
    assert len(a) > 10 and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the trained state, on other frozen weights
    module = tiny_module(spec_b, allow_teacher_transfer=True)
    module.on_load_checkpoint(ckpt)
    assert module.restored_from_checkpoint


def test_the_same_weights_in_another_place_load_without_override(two_teachers, tmp_path):
    import shutil

    spec_a, _, path, _ = two_teachers
    shutil.copytree(spec_a.weights, tmp_path / "moved")
    model = load_student(path, teacher_weights=str(tmp_path / "moved"))
    assert model.unet.bucket_map.same_as(load_student(path).unet.bucket_map)


def test_the_bucket_map_travels_with_the_checkpoint_and_a_run_on_other_grids_is_refused(two_teachers, tmp_path):
    from test_training_helpers import PHASES

    from saq_lightning.data import MixStepPhase

    spec_a = two_teachers[0]
    module = tiny_module(spec_a, spacing="time_quadratic")
    module.bind_bucket_map(PHASES)
    module.calibrate_student()
    ckpt: dict = {}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "s.ckpt")
    loaded = load_student(tmp_path / "s.ckpt").unet
    assert loaded.bucket_map.trained and loaded.bucket_map.same_as(module.student.bucket_map)
    ts = torch.tensor(module.student.bucket_map.grids[0].timesteps, dtype=torch.float32)
    assert torch.equal(loaded.bucket_index(ts, 10), module.student.bucket_index(ts, 10))
    other = tiny_module(spec_a, spacing="time_quadratic")
    other.bind_bucket_map([MixStepPhase(7)])
    with pytest.raises(CheckpointMismatchError, match="timestep-bucket tables differ"):
        other.on_load_checkpoint(ckpt)
