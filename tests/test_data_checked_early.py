"""Bad data is found early and blamed on the data: shards of other phases are refused before
calibration, ``data.verify: true`` checks every shard's sha256 at the start, ``generate --verify``
checks an existing folder, and a NaN record stops the run naming its shard and record before any
loss is computed."""

from __future__ import annotations

import pytest
from cli_run_helpers import tiny_fit_config
from test_training_helpers import (
    LossRecorder,
    save_tiny_teacher,
    tiny_datamodule,
    tiny_module,
    tiny_trainer,
    write_tiny_shards,
)

from saq_lightning.alignment import generation
from saq_lightning.cli import main
from saq_lightning.data import MixStepPhase, MixStepSchedule
from saq_lightning.data.batch_check import DataValueError
from saq_lightning.data.errors import ManifestMismatchError, ShardError

BAD_TRAJ, BAD_STEP = 5, 3  # trajectory 5 is in shard 2 (2 trajectories per shard)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("early")
    return root, save_tiny_teacher(root / "teacher")


@pytest.fixture(scope="module")
def shards(teacher):
    root, spec = teacher
    return write_tiny_shards(spec, root / "shards")


def counted_calibrations(module):
    calls: list[int] = []
    original = module.calibrate_student

    def counted():
        calls.append(1)
        return original()

    module.calibrate_student = counted
    return calls


def test_a_nan_record_is_a_data_error_naming_shard_and_record_before_any_loss(teacher, monkeypatch, tmp_path):
    _, spec = teacher
    original = generation.TrajectoryRollout.__call__

    def with_a_nan(self, traj_indices):  # as if the teacher had overflowed on one record
        records = original(self, traj_indices)
        for record in records:
            if record["traj"] == BAD_TRAJ and record["step"] == BAD_STEP:
                record["x_s"] = record["x_s"].clone()
                record["x_s"][0, 2, 2] = float("nan")
        return records

    monkeypatch.setattr(generation.TrajectoryRollout, "__call__", with_a_nan)
    nan_shards = write_tiny_shards(spec, tmp_path / "nan_shards")
    monkeypatch.undo()
    losses = LossRecorder()
    trainer = tiny_trainer(tmp_path, 40, [losses])
    with pytest.raises(DataValueError) as error:
        trainer.fit(tiny_module(spec), datamodule=tiny_datamodule(nan_shards))
    message = str(error.value)
    assert message.startswith(f"{nan_shards / 'shard-000002.tar'}: record of trajectory {BAD_TRAJ}, "
                              f"step {BAD_STEP} has 1 non-finite value(s) in 'x_s'")
    assert len(losses.losses) == trainer.global_step  # the bad batch never reached the loss


def test_shards_of_other_phases_are_refused_before_calibration(teacher, shards, tmp_path):
    _, spec = teacher
    module = tiny_module(spec)
    calls = counted_calibrations(module)
    other = MixStepSchedule((MixStepPhase(10, 1, 3), MixStepPhase(5, 1, 2)), batches_per_phase=2)
    with pytest.raises(ManifestMismatchError, match=r"phases\[0\]\.teacher_order: expected 3, found 2"):
        tiny_trainer(tmp_path, 2, schedule=other).fit(module, datamodule=tiny_datamodule(shards))
    assert calls == []


def corrupt_copy(shards, folder):
    import shutil

    shutil.copytree(shards, folder)
    path = folder / "shard-000001.tar"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only the hash can tell
    path.write_bytes(bytes(data))
    return folder


def test_verify_true_checks_every_hash_at_the_start(shards, tmp_path):
    bad = corrupt_copy(shards, tmp_path / "bad")
    tiny_datamodule(bad).setup("fit")  # default: size only at the start (hashes when read)
    with pytest.raises(ShardError, match=r"shard-000001\.tar: sha256 differs from the manifest"):
        tiny_datamodule(bad, verify=True).setup("fit")


def test_generate_verify_reports_the_corrupt_shard_and_passes_a_good_folder(teacher, shards, tmp_path, capsys):
    _, spec = teacher
    good = tiny_fit_config(tmp_path / "good.yaml", spec, shards, tmp_path / "run", 1)
    main(["generate", "--config", str(good), "--verify"])
    assert "verified 8 shards" in capsys.readouterr().out
    bad = tiny_fit_config(tmp_path / "bad.yaml", spec, corrupt_copy(shards, tmp_path / "bad"), tmp_path / "run", 1)
    with pytest.raises(SystemExit) as stop:
        main(["generate", "--config", str(bad), "--verify"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert "1 of 8 shard(s) failed verification" in err and "shard-000001.tar: sha256 differs" in err
