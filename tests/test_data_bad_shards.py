"""Truncated and corrupt shards: an error naming the shard, or (skip mode) left out and counted."""

from __future__ import annotations

import pytest

from saq_lightning.data.errors import ShardError
from saq_lightning.data.manifest import load_manifest, shard_name
from saq_lightning.data.shard_reader import read_shard_samples
from saq_lightning.data.shard_writer import write_trajectory_shards
from saq_lightning.data.synthetic import SyntheticRollout
from saq_lightning.data.trajectory_datamodule import TrajectoryDataModule


@pytest.fixture
def shards(tmp_path):
    """8 trajectories of 2 records (one phase), 2 per shard: 4 shards of 4 records."""
    write_trajectory_shards(tmp_path, SyntheticRollout(steps_per_phase=(2,)), num_trajectories=8,
                            trajectories_per_shard=2, meta={"model_id": "tiny"}, progress=False)
    return tmp_path


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 3000])


def corrupt(path):
    """Flip bytes inside the first record's array: same size, valid tar headers."""
    data = bytearray(path.read_bytes())
    for i in range(700, 716):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_truncated_shard_is_an_error_naming_it_before_training(shards):
    truncate(shards / shard_name(2))
    dm = TrajectoryDataModule(str(shards), batch_size=4)
    with pytest.raises(ShardError, match=r"shard-000002\.tar: size \d+ bytes, manifest says \d+"):
        dm.setup("fit")


def test_corrupt_shard_is_an_error_naming_it_when_read(shards):
    corrupt(shards / shard_name(1))
    dm = TrajectoryDataModule(str(shards), batch_size=4, shuffle_shards=1)
    dm.setup("fit")  # same size: only the checksum can tell
    with pytest.raises(ShardError, match=r"shard-000001\.tar: sha256 differs from the manifest"):
        list(dm.train_dataloader())


def test_skip_mode_leaves_bad_shards_out_and_counts_them(shards):
    truncate(shards / shard_name(0))
    corrupt(shards / shard_name(3))
    dm = TrajectoryDataModule(str(shards), batch_size=2, on_bad_shard="skip")
    out = list(dm.train_dataloader())
    assert dm.skipped_shards == [shard_name(0), shard_name(3)]
    assert dm.skipped_records == 8
    assert len(out) == 4  # the 8 records of shards 1 and 2, one pass
    assert {t for b in out for t in b["traj"].tolist()} == {2, 3, 4, 5}


def test_shard_with_fewer_records_than_its_manifest_entry_is_an_error(shards):
    manifest = load_manifest(shards)
    info = manifest.shards[1]
    lying = type(info)(**{**info.__dict__, "count": info.count + 1})
    with pytest.raises(ShardError, match=r"shard-000001\.tar: 4 records, manifest says 5"):
        read_shard_samples(shards / info.name, lying)


def test_broken_tar_is_an_error_naming_the_shard_when_checksums_are_off(shards):
    path = shards / shard_name(1)
    data = bytearray(path.read_bytes())
    data[100:108] = b"garbage!"  # inside the first tar header: its checksum no longer matches
    path.write_bytes(bytes(data))
    info = load_manifest(shards).shards[1]
    with pytest.raises(ShardError, match=r"shard-000001\.tar: not a readable tar shard"):
        read_shard_samples(path, info, verify="size")
