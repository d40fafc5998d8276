"""Bad input to ``fit``: damaged shards, shards made for another configuration, a phase the timestep
buckets cannot serve, NaN/Inf losses and gradients. Every error names what is wrong."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_training_helpers import (
    LossRecorder,
    save_tiny_teacher,
    tiny_datamodule,
    tiny_module,
    tiny_spec,
    tiny_trainer,
    write_tiny_shards,
)

from saq_lightning.callbacks import NonFiniteLossError
from saq_lightning.data import ManifestMismatchError, MixStepPhase, MixStepSchedule, ShardError
from saq_lightning.data.manifest import load_manifest


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    spec = save_tiny_teacher(root / "teacher")
    return root, spec, write_tiny_shards(spec, root / "shards")


def copy_shards(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_a_truncated_shard_is_an_error_naming_it(tmp_path, data):
    _, spec, shards = data
    folder = copy_shards(shards, tmp_path / "shards")
    victim = folder / load_manifest(folder).shards[3].name
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(ShardError, match=rf"{victim}: size 1000 bytes"):
        tiny_trainer(tmp_path, 1).fit(tiny_module(spec), datamodule=tiny_datamodule(folder))


def test_with_on_bad_shard_skip_a_corrupt_shard_is_left_out_and_counted(tmp_path, data):
    _, spec, shards = data
    folder = copy_shards(shards, tmp_path / "shards")
    victim = folder / load_manifest(folder).shards[0].name
    raw = bytearray(victim.read_bytes())
    raw[700] ^= 0xFF  # same size, other content
    victim.write_bytes(bytes(raw))
    dm = tiny_datamodule(folder, on_bad_shard="skip")
    tiny_trainer(tmp_path, 2).fit(tiny_module(spec), datamodule=dm)
    assert dm.skipped_shards == [victim.name] and dm.skipped_records == 20  # 2 trajectories x 10


def teacher_variant(root, name, edit):
    """A copy of the tiny teacher whose spec or config.json differs in one respect."""
    folder = root / name
    shutil.copytree(root / "teacher", folder)
    spec = tiny_spec(folder)
    return edit(spec, folder)


def other_name(spec, folder):
    spec.name = "tiny_v2"
    return spec


def other_schedule(spec, folder):
    spec.schedule = {**spec.schedule, "beta_end": 0.012}
    return spec


def other_shape(spec, folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sample_size": 16}))
    return spec


@pytest.mark.parametrize("edit, field, expected, found", [
    (other_name, "model_id", "'tiny_v2'", "'tiny'"),
    (other_schedule, "schedule.beta_end", "0.012", "0.02"),
    (other_shape, r"image_shape\[1\]", "16", "8"),
])
def test_shards_made_for_another_model_schedule_or_shape_are_refused_naming_the_field(
        tmp_path, data, edit, field, expected, found):
    root, _, shards = data
    spec = teacher_variant(root, f"teacher_{field}", edit)
    with pytest.raises(ManifestMismatchError, match=rf"{field}: expected {expected}, found {found}"):
        tiny_trainer(tmp_path, 1).fit(tiny_module(spec), datamodule=tiny_datamodule(shards))


def test_shards_made_with_another_guidance_scale_are_refused(tmp_path, data):
    _, spec, shards = data
    with pytest.raises(ManifestMismatchError, match=r"guidance_scale: expected 2.0, found 1.0"):
        tiny_trainer(tmp_path, 1).fit(tiny_module(spec, guidance_scale=2.0),
                                      datamodule=tiny_datamodule(shards))


def test_a_phase_whose_grid_the_timestep_buckets_cannot_serve_is_refused_naming_it(tmp_path, data):
    _, spec, shards = data
    schedule = MixStepSchedule((MixStepPhase(10), MixStepPhase(20)))  # 20 steps, 10 buckets
    with pytest.raises(ValueError, match=r"phase 1 \(student_steps=20\): more steps than the 10 "
                                         r"activation-quantizer timestep buckets"):
        tiny_trainer(tmp_path, 1, schedule=schedule).fit(tiny_module(spec),
                                                         datamodule=tiny_datamodule(shards))


class NaNLossAt:
    """Patches the module's student direction to return NaN at the given optimizer steps."""

    def __init__(self, module, steps):
        self.module, self.steps, original = module, set(steps), module.saq.student_direction

        def direction(*args):
            out = original(*args)
            return out * float("nan") if module.global_step in self.steps else out

        module.saq.student_direction = direction


class SnapshotParams(Callback):
    def __init__(self) -> None:
        self.before: dict[int, torch.Tensor] = {}
        self.after: dict[int, torch.Tensor] = {}

    @staticmethod
    def flat(module):
        return torch.cat([p.detach().flatten().clone() for p in module.student.parameters()
                          if p.requires_grad])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[trainer.global_step] = self.flat(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[trainer.global_step - 1] = self.flat(pl_module)


def test_nan_losses_are_skipped_and_counted_without_moving_the_weights(tmp_path, data):
    _, spec, shards = data
    module = tiny_module(spec)
    NaNLossAt(module, {1, 3})
    snap, recorder = SnapshotParams(), LossRecorder()
    trainer = tiny_trainer(tmp_path, 5, [snap, recorder])
    trainer.fit(module, datamodule=tiny_datamodule(shards))
    assert trainer.global_step == 5 and trainer.callback_metrics["train/skipped_nonfinite"] == 2
    for step in (1, 3):
        assert torch.equal(snap.before[step], snap.after[step])
    for step in (0, 2, 4):
        assert not torch.equal(snap.before[step], snap.after[step])


def test_too_many_nan_losses_stop_training_naming_the_last_good_checkpoint(tmp_path, data):
    _, spec, shards = data
    module = tiny_module(spec, max_nonfinite_steps=1)
    NaNLossAt(module, {3, 4})
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0,
                                 every_n_train_steps=1)
    trainer = tiny_trainer(tmp_path, 8, [checkpoint])
    last = tmp_path / "ckpt" / "last.ckpt"
    with pytest.raises(NonFiniteLossError, match=rf"2 steps had a non-finite .*limit max_nonfinite_"
                                                 rf"steps=1; skipped steps \[3, 4\]\); the last good "
                                                 rf"checkpoint is {last}"):
        trainer.fit(module, datamodule=tiny_datamodule(shards))
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 4  # written after the skipped step 3; weights as after step 2
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values() if t.is_floating_point())


class NaNGradAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.step:
            next(p for p in pl_module.student.parameters() if p.requires_grad).grad.fill_(float("inf"))


def test_a_finite_loss_with_non_finite_gradients_skips_the_optimizer_step(tmp_path, data):
    _, spec, shards = data
    snap = SnapshotParams()
    trainer = tiny_trainer(tmp_path, 3, [NaNGradAt(1), snap])
    trainer.fit(tiny_module(spec), datamodule=tiny_datamodule(shards))
    assert torch.equal(snap.before[1], snap.after[1])
    assert not torch.equal(snap.before[2], snap.after[2])
    assert trainer.callback_metrics["train/skipped_nonfinite"] == 1
