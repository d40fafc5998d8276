"""Shard writer: manifest contents, determinism, resumable and multi-rank writing, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from saq_lightning.data.errors import ManifestMismatchError
from saq_lightning.data.manifest import load_manifest, shard_name
from saq_lightning.data.records import decode_sample, encode_record
from saq_lightning.data.shard_reader import read_shard_samples
from saq_lightning.data.shard_writer import write_trajectory_shards
from saq_lightning.data.synthetic import SyntheticRollout
from saq_lightning.files import sha256_file

META = {"model_id": "tiny", "image_shape": [1, 8, 8], "schedule": {"beta_schedule": "linear"}}


def write(folder, rollout=None, **kwargs):
    args = {"num_trajectories": 10, "trajectories_per_shard": 3, "meta": META, "progress": False}
    args.update(kwargs)
    return write_trajectory_shards(folder, rollout or SyntheticRollout(seed=0), **args)


def shard_stats(folder):
    return {p.name: (p.stat().st_mtime_ns, sha256_file(p)) for p in sorted(folder.glob("*.tar"))}


def test_manifest_records_counts_per_shard_and_phase_shapes_and_checksums(tmp_path):
    report = write(tmp_path, SyntheticRollout(steps_per_phase=(4, 2)))
    manifest = load_manifest(tmp_path)
    assert report.written == [0, 1, 2, 3] and report.kept == []
    assert manifest.meta == META
    assert [(s.first_traj, s.end_traj) for s in manifest.shards] == [(0, 3), (3, 6), (6, 9),
                                                                       (9, 10)]
    # trajectory i has phase i % 2: phase 0 -> 4 records, phase 1 -> 2 records
    assert [s.count for s in manifest.shards] == [10, 8, 10, 2]
    assert manifest.shards[0].phase_counts == {0: 8, 1: 2}
    assert manifest.phase_counts == {0: 20, 1: 10} and manifest.count == 30
    assert manifest.image_shape == [1, 8, 8]
    assert manifest.fields["eps_eff"] == {"kind": "tensor", "shape": [1, 8, 8], "dtype": "float32"}
    assert manifest.fields["cond"] == {"kind": "int"}
    for shard in manifest.shards:
        assert shard.sha256 == sha256_file(tmp_path / shard.name)
        assert shard.bytes == (tmp_path / shard.name).stat().st_size


def test_records_read_back_equal_what_rollout_returned(tmp_path):
    rollout = SyntheticRollout(seed=3)
    write(tmp_path, rollout)
    manifest = load_manifest(tmp_path)
    samples = read_shard_samples(tmp_path / shard_name(1), manifest.shards[1])
    decoded = [decode_sample(s, manifest.fields) for s in samples]
    expected = rollout([3, 4, 5])
    assert len(decoded) == len(expected)
    for got, want in zip(decoded, expected):
        assert torch.equal(got["x_s"], want["x_s"]) and torch.equal(got["eps_eff"], want["eps_eff"])
        assert {k: got[k] for k in ("s", "t", "order", "steps", "phase", "cond", "traj", "step")} \
            == {k: want[k] for k in ("s", "t", "order", "steps", "phase", "cond", "traj", "step")}


def test_bfloat16_storage_keeps_the_rounded_values(tmp_path):
    record = SyntheticRollout()([0])[0]
    sample, fields = encode_record(record, "000000000_00000", storage_dtype="bfloat16")
    decoded = decode_sample(sample, {"x_s": fields["x_s"]})
    assert decoded["x_s"].dtype == torch.bfloat16
    assert torch.equal(decoded["x_s"], record["x_s"].to(torch.bfloat16))


def test_same_seed_writes_byte_identical_shards_and_other_seed_differs(tmp_path):
    write(tmp_path / "a", SyntheticRollout(seed=7))
    write(tmp_path / "b", SyntheticRollout(seed=7))
    write(tmp_path / "c", SyntheticRollout(seed=8), meta={**META, "seed": 8})
    def sha(name):
        return [s.sha256 for s in load_manifest(tmp_path / name).shards]

    assert sha("a") == sha("b")
    assert sha("a") != sha("c")


def test_rerun_keeps_finished_shards_untouched(tmp_path):
    write(tmp_path)
    before = shard_stats(tmp_path)
    report = write(tmp_path)
    assert report.written == [] and report.kept == [0, 1, 2, 3]
    assert shard_stats(tmp_path) == before


def test_half_written_and_truncated_shards_are_redone_and_the_rest_kept(tmp_path):
    write(tmp_path)
    before = shard_stats(tmp_path)
    # Shard 1: a crash mid-write leaves a temp file and no entry. Shard 2: truncated afterwards.
    (tmp_path / shard_name(1)).rename(tmp_path / f".{shard_name(1)}.tmp.12345")
    (tmp_path / (shard_name(1) + ".json")).unlink()
    data = (tmp_path / shard_name(2)).read_bytes()
    (tmp_path / shard_name(2)).write_bytes(data[: len(data) // 2])
    report = write(tmp_path)
    after = shard_stats(tmp_path)
    assert report.written == [1, 2] and report.kept == [0, 3]
    assert not list(tmp_path.glob(".*.tmp*"))
    for name in (shard_name(0), shard_name(3)):
        assert after[name] == before[name]  # untouched: same mtime and checksum
    for name in (shard_name(1), shard_name(2)):
        assert after[name][1] == before[name][1]  # redone byte-identically
    assert report.manifest is not None and report.manifest.count == 30


def test_folder_with_other_meta_is_refused_without_touching_it(tmp_path):
    write(tmp_path)
    before = shard_stats(tmp_path)
    manifest_text = (tmp_path / "manifest.json").read_text()
    with pytest.raises(ManifestMismatchError, match=r"meta\.model_id: expected 'tiny', found 'other'"):
        write(tmp_path, meta={**META, "model_id": "other"})
    with pytest.raises(ManifestMismatchError, match="trajectories_per_shard: expected 3, found 4"):
        write(tmp_path, trajectories_per_shard=4)
    assert shard_stats(tmp_path) == before
    assert (tmp_path / "manifest.json").read_text() == manifest_text


def test_ranks_write_their_own_shards_and_the_last_one_completes_the_manifest(tmp_path):
    first = write(tmp_path, rank=0, world_size=2)
    assert first.written == [0, 2] and first.manifest is None
    assert json.loads((tmp_path / "manifest.json").read_text())["complete"] is False
    second = write(tmp_path, rank=1, world_size=2)
    assert second.written == [1, 3]
    assert second.manifest is not None and second.manifest.complete
    assert load_manifest(tmp_path).count == 30


def test_rollout_that_drops_a_trajectory_is_an_error(tmp_path):
    rollout = SyntheticRollout()

    def lossy(indices):
        return rollout(indices[1:])

    with pytest.raises(ValueError, match=r"no records for trajectories \[0\]"):
        write(tmp_path, lossy)
    assert not list(tmp_path.glob("*.tar")) and not list(tmp_path.glob(".*.tmp*"))


def test_record_without_required_field_is_an_error(tmp_path):
    rollout = SyntheticRollout()

    def no_time(indices):
        return [{k: v for k, v in r.items() if k != "t"} for r in rollout(indices)]

    with pytest.raises(ValueError, match=r"missing field\(s\) \['t'\]"):
        write(tmp_path, no_time)


def test_a_shards_path_that_is_a_file_is_refused_naming_it_and_the_file_is_kept(tmp_path):
    from saq_lightning.data.errors import ManifestError

    existing = tmp_path / "model.ckpt"
    existing.write_bytes(b"someone's checkpoint")
    with pytest.raises(ManifestError, match=r"model\.ckpt: is a file, but trajectory shards are written to a folder"):
        write(existing)
    assert existing.read_bytes() == b"someone's checkpoint"
