"""TrajectoryDataModule checks: manifest expectations, schedule vs data, resume config, on-the-fly."""

from __future__ import annotations

import pytest
import torch

from saq_lightning.data.errors import ManifestError, ManifestMismatchError, ResumeMismatchError
from saq_lightning.data.mixstep import MixStepSchedule
from saq_lightning.data.shard_writer import write_trajectory_shards
from saq_lightning.data.synthetic import SyntheticRollout
from saq_lightning.data.trajectory_datamodule import TrajectoryDataModule

SCHEDULE = MixStepSchedule.from_steps([4, 2])
META = {
    "model_id": "tiny-digits",
    "schedule": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
    "phases": SCHEDULE.to_dict()["phases"],
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_trajectory_shards(folder, SyntheticRollout(steps_per_phase=(4, 2)), num_trajectories=8,
                            trajectories_per_shard=2, meta=META, progress=False)
    return str(folder)


def test_expected_facts_that_match_pass(shards):
    dm = TrajectoryDataModule(shards, expect={"model_id": "tiny-digits", "image_shape": [1, 8, 8],
                                              "schedule": {"beta_schedule": "linear"}})
    dm.setup("fit")
    assert dm.manifest.count == 24


def test_manifest_mismatch_names_field_expected_and_found(shards):
    dm = TrajectoryDataModule(shards, expect={"model_id": "ldm-4", "schedule": {"beta_end": 0.012}})
    with pytest.raises(ManifestMismatchError) as info:
        dm.setup("fit")
    assert info.value.mismatches == [("model_id", "ldm-4", "tiny-digits"),
                                     ("schedule.beta_end", 0.012, 0.02)]
    assert "model_id: expected 'ldm-4', found 'tiny-digits'" in str(info.value)
    assert "manifest.json" in str(info.value)


def test_image_shape_is_checked_against_the_stored_points(shards):
    dm = TrajectoryDataModule(shards, image_shape=[3, 8, 8])
    with pytest.raises(ManifestMismatchError, match=r"image_shape\[0\]: expected 3, found 1"):
        dm.setup("fit")


def test_schedule_that_differs_from_the_phases_the_data_was_made_for_is_an_error(shards):
    dm = TrajectoryDataModule(shards, mixstep=MixStepSchedule.from_steps([4, 3]))
    with pytest.raises(ManifestMismatchError, match=r"phases\[1\]\.student_steps: expected 3, "
                                                    r"found 2"):
        dm.train_dataloader()


def test_schedule_phase_without_records_is_an_error(shards):
    dm = TrajectoryDataModule(shards, phases=[5])
    with pytest.raises(ManifestError, match=r"no records of phase\(s\) \(5,\)"):
        dm.train_dataloader()


def test_folder_without_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(ManifestError, match="no manifest"):
        TrajectoryDataModule(str(tmp_path)).setup("fit")


def test_checkpoint_from_another_data_configuration_is_refused_or_warned(shards):
    saved = TrajectoryDataModule(shards, batch_size=4)
    saved.train_dataloader()
    state = saved.state_dict()
    state["next_batch"] = 3
    strict = TrajectoryDataModule(shards, batch_size=2)
    strict.load_state_dict(state)
    with pytest.raises(ResumeMismatchError, match="batch_size: expected 4, found 2"):
        strict.train_dataloader()
    lenient = TrajectoryDataModule(shards, batch_size=2, strict_resume=False)
    lenient.load_state_dict(state)
    assert next(iter(lenient.train_dataloader()))["batch_index"] == 3


def test_schedule_handed_over_twice_must_agree(shards):
    dm = TrajectoryDataModule(shards, mixstep=SCHEDULE)
    dm.set_mixstep(SCHEDULE)
    with pytest.raises(ValueError, match="already has a different mixstep schedule"):
        dm.set_mixstep(MixStepSchedule.from_steps([2]))


def on_the_fly(**kwargs):
    args = {"image_shape": [1, 8, 8], "num_classes": 10, "batch_size": 5, "batches_per_epoch": 4,
            "seed": 3}
    return TrajectoryDataModule(None, **{**args, **kwargs})


def test_on_the_fly_noise_depends_only_on_seed_and_sample_index():
    whole = list(on_the_fly(batch_size=10).train_dataloader())
    halves = list(on_the_fly(batch_size=5, batches_per_epoch=8).train_dataloader())
    assert torch.equal(torch.cat([b["x_T"] for b in whole]), torch.cat([b["x_T"] for b in halves]))
    assert torch.equal(whole[0]["index"], torch.arange(10))
    other = next(iter(on_the_fly(seed=4).train_dataloader()))
    assert not torch.equal(other["x_T"], halves[0]["x_T"])


def test_on_the_fly_labels_are_class_balanced():
    labels = torch.cat([b["cond"] for b in on_the_fly(batch_size=10).train_dataloader()])
    assert torch.bincount(labels, minlength=10).tolist() == [4] * 10
    assert labels[:10].tolist() != list(range(10))  # shuffled within each block


def test_on_the_fly_ranks_get_different_noise():
    rank0, rank1 = on_the_fly(), on_the_fly()
    rank1._rank_world = lambda: (1, 2)
    rank0._rank_world = lambda: (0, 2)
    b0, b1 = next(iter(rank0.train_dataloader())), next(iter(rank1.train_dataloader()))
    assert b0["index"].tolist() == [0, 1, 2, 3, 4] and b1["index"].tolist() == [5, 6, 7, 8, 9]


def test_on_the_fly_batches_carry_the_phase_to_roll_out():
    schedule = MixStepSchedule.from_steps([20, 10], teacher_order=3, batches_per_phase=2)
    out = list(on_the_fly(mixstep=schedule).train_dataloader())
    assert [b["mixstep_phase"] for b in out] == [0, 0, 1, 1]
    assert out[2]["student_steps"].tolist() == [10] * 5
    assert out[2]["teacher_order"].tolist() == [3] * 5
    assert out[0]["x_T"].shape == (5, 1, 8, 8)
