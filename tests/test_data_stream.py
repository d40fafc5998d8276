"""Batch streams from real shards, without a trainer: phases, determinism, ranks, workers, resume."""

from __future__ import annotations

import pytest
from torch.utils.data import DataLoader

from saq_lightning.data.mixstep import MixStepSchedule
from saq_lightning.data.shard_writer import write_trajectory_shards
from saq_lightning.data.synthetic import SyntheticRollout
from saq_lightning.data.trajectory_datamodule import TrajectoryDataModule

STEPS = (4, 2)  # phase 0: 4 records per trajectory, phase 1: 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """14 trajectories, 2 per shard, one phase per shard: 7 shards; 32 + 12 records."""
    folder = tmp_path_factory.mktemp("shards")
    write_trajectory_shards(folder, SyntheticRollout(seed=1, steps_per_phase=STEPS, phase_block=2),
                            num_trajectories=14, trajectories_per_shard=2,
                            meta={"model_id": "tiny"}, progress=False)
    return folder


def batches(dm, start=0, rank=None, world=None):
    """The batches of one epoch's iterator (dataset built as for the given rank)."""
    if rank is not None:
        dm._rank_world = lambda: (rank, world)
    dm.load_state_dict({"next_batch": start})
    loader = dm.train_dataloader()
    return list(loader)


def points(batch):
    return list(zip(batch["traj"].tolist(), batch["step"].tolist()))


def test_each_batch_holds_only_the_phase_the_schedule_gives_its_index(shards):
    schedule = MixStepSchedule.from_steps([4, 2], batches_per_phase=2)
    out = batches(TrajectoryDataModule(str(shards), batch_size=3, mixstep=schedule))
    assert len(out) == 44 // 3
    for b in out:
        expected = schedule.phase_at(b["batch_index"], len(out))
        assert b["mixstep_phase"] == expected
        assert b["phase"].tolist() == [expected] * 3
        assert b["steps"].tolist() == [STEPS[expected]] * 3


def test_static_phase_filter_yields_only_that_phase(shards):
    out = batches(TrajectoryDataModule(str(shards), batch_size=4, phases=[1]))
    assert len(out) == 12 // 4
    assert {p for b in out for p in b["phase"].tolist()} == {1}


def test_one_epoch_without_schedule_reads_every_record_once(shards):
    out = batches(TrajectoryDataModule(str(shards), batch_size=4))
    seen = [p for b in out for p in points(b)]
    assert len(out) == 11 and len(seen) == 44 == len(set(seen))


def test_same_seed_gives_the_same_batches_and_another_seed_another_order(shards):
    first = [points(b) for b in batches(TrajectoryDataModule(str(shards), batch_size=4, seed=5))]
    again = [points(b) for b in batches(TrajectoryDataModule(str(shards), batch_size=4, seed=5))]
    other = [points(b) for b in batches(TrajectoryDataModule(str(shards), batch_size=4, seed=6))]
    assert first == again
    assert first != other
    assert sorted(p for b in first for p in b) == sorted(p for b in other for p in b)


def test_ranks_get_disjoint_records_and_equal_batch_counts_on_uneven_shards(shards):
    # 7 shards over 2 ranks: 4 and 3 shards of different sizes.
    per_rank = [batches(TrajectoryDataModule(str(shards), batch_size=4, batches_per_epoch=6),
                        rank=r, world=2) for r in (0, 1)]
    assert [len(b) for b in per_rank] == [6, 6]
    seen = [{p for b in rank_batches for p in points(b)} for rank_batches in per_rank]
    assert not seen[0] & seen[1]


def test_next_epoch_continues_from_the_stored_position_in_a_new_order(shards):
    dm = TrajectoryDataModule(str(shards), batch_size=4)
    first = batches(dm)
    second = batches(dm, start=11)
    assert [b["batch_index"] for b in second] == list(range(11, 22))
    assert [b["epoch"] for b in second] == [1] * 11
    assert [points(b) for b in first] != [points(b) for b in second]


@pytest.mark.parametrize("start", [3, 6])
def test_resumed_iterator_with_workers_continues_the_uninterrupted_sequence(shards, start):
    schedule = MixStepSchedule.from_steps([4, 2], batches_per_phase=3)
    def make():
        return TrajectoryDataModule(str(shards), batch_size=2, num_workers=2, mixstep=schedule,
                                    batches_per_epoch=10)

    full = batches(make())
    resumed = batches(make(), start=start)
    assert [b["batch_index"] for b in resumed] == list(range(start, 10))
    assert [points(b) for b in resumed] == [points(b) for b in full[start:]]


def test_more_ranks_times_workers_than_shards_of_a_phase_is_an_error(shards):
    dm = TrajectoryDataModule(str(shards), batch_size=2, num_workers=2, phases=[1])
    dm._rank_world = lambda: (0, 2)
    with pytest.raises(ValueError, match=r"phase\(s\) \(1,\) are in 3 shard\(s\), fewer than the "
                                         r"2 rank\(s\) x 2 worker\(s\)"):
        dm.train_dataloader()


def test_loader_has_the_epoch_length_and_dataloader_workers_must_match(shards):
    dm = TrajectoryDataModule(str(shards), batch_size=4, batches_per_epoch=5)
    loader = dm.train_dataloader()
    assert len(loader) == 5
    with pytest.raises(RuntimeError, match="built for 0 DataLoader workers runs under 2"):
        list(DataLoader(loader.dataset, batch_size=None, num_workers=2))
