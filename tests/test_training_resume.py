"""Resuming from ``last.ckpt`` after an interruption continues the very same loss sequence.

Tolerance: relative 1e-6 (on CPU the sequences are bitwise equal: same batches from the data
module's stored position, same optimizer and LR-scheduler state, no re-calibration).
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_training_helpers import (
    LossRecorder,
    save_tiny_teacher,
    tiny_datamodule,
    tiny_module,
    tiny_trainer,
    write_tiny_shards,
)

from saq_lightning.callbacks import MixStepCallback

TOTAL, CUT = 12, 5  # a cut inside a mixstep cycle (2 batches per phase) and inside an epoch


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    spec = save_tiny_teacher(root / "teacher")
    return root, spec, write_tiny_shards(spec, root / "shards")


def fit(root, spec, shards, max_steps, ckpt_path=None, calibrations=None):
    module = tiny_module(spec)
    if calibrations is not None:
        original = module.calibrate_student

        def counted():
            calibrations.append(1)
            return original()

        module.calibrate_student = counted
    recorder = LossRecorder()
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_last=True, save_top_k=0,
                                 every_n_train_steps=1)
    # batches_per_epoch 7: the cut (5) and the end (12) fall mid-epoch
    trainer = tiny_trainer(root, max_steps, [recorder, checkpoint])
    trainer.fit(module, datamodule=tiny_datamodule(shards, batches_per_epoch=7), ckpt_path=ckpt_path)
    return module, recorder.losses, trainer


def test_resume_from_last_ckpt_gives_the_uninterrupted_loss_sequence(setup):
    root, spec, shards = setup
    full_module, full, _ = fit(root / "full", spec, shards, TOTAL)
    _, first, _ = fit(root / "cut", spec, shards, CUT)
    calibrations: list[int] = []
    resumed_module, rest, trainer = fit(root / "cut", spec, shards, TOTAL,
                                        ckpt_path=str(root / "cut" / "ckpt" / "last.ckpt"),
                                        calibrations=calibrations)
    assert len(full) == TOTAL and len(first) == CUT and len(rest) == TOTAL - CUT
    torch.testing.assert_close(torch.tensor(first + rest), torch.tensor(full), rtol=1e-6, atol=0)
    assert calibrations == []  # quantizer state came from the checkpoint
    for (name, a), (_, b) in zip(full_module.student.named_parameters(),
                                 resumed_module.student.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0, msg=name)
    mixstep = next(cb for cb in trainer.callbacks if isinstance(cb, MixStepCallback))
    assert mixstep.next_batch == TOTAL and sum(mixstep.phase_batches) == TOTAL


def test_a_fresh_run_calibrates_exactly_once(setup):
    root, spec, shards = setup
    calibrations: list[int] = []
    fit(root / "once", spec, shards, 2, calibrations=calibrations)
    assert calibrations == [1]


def test_checkpoint_of_another_quantization_policy_is_refused_naming_the_field(setup):
    root, spec, shards = setup
    fit(root / "w4a4", spec, shards, 1)
    other = tiny_module(spec, policy={"preset": "w4a8", "lora_rank": 2, "n_buckets": 10})
    trainer = tiny_trainer(root / "w4a8", 2)
    with pytest.raises(ValueError, match=r"policy\.act_bits: expected 4, found 8"):
        trainer.fit(other, datamodule=tiny_datamodule(shards, batches_per_epoch=7),
                    ckpt_path=str(root / "w4a4" / "ckpt" / "last.ckpt"))

