"""Teacher trajectories -> shards: deterministic (independent of the number of ranks), resumable,
one phase per shard, a manifest that records config, counts, shapes, dtype and checksums."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch
from test_training_helpers import SCHEDULE, save_tiny_teacher, tiny_module

from saq_lightning.alignment.conditions import noise_for
from saq_lightning.alignment.generation import PhaseLayout, generate_trajectories
from saq_lightning.data import ManifestMismatchError, load_manifest
from saq_lightning.data.records import decode_sample
from saq_lightning.data.shard_reader import read_shard_samples

# 8 trajectories per phase, 2 per shard: shards 0-3 hold phase 0 (10 steps), 4-7 phase 1 (5 steps)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("generate")
    spec = save_tiny_teacher(root / "teacher")
    module = tiny_module(spec)
    report = generate_trajectories(module, SCHEDULE, root / "one", progress=False)
    return root, spec, module, report


def digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


def test_manifest_records_config_counts_shapes_dtype_and_checksums(made):
    root, _, module, report = made
    manifest = load_manifest(root / "one")
    assert report.manifest.to_dict() == manifest.to_dict() and report.written == list(range(8))
    meta = manifest.meta
    assert meta["model_id"] == "tiny" and meta["image_shape"] == [1, 8, 8]
    assert meta["phases"] == SCHEDULE.to_dict()["phases"]
    assert meta["schedule"] == module.teacher.schedule_config
    assert (meta["guidance_scale"], meta["teacher_solver"], meta["spacing"]) == (1.0, "dpm", "time_uniform")
    assert meta["conditions"] == {"type": "class_labels", "num_classes": 10, "balanced": True}
    assert manifest.phase_counts == {0: 8 * 10, 1: 8 * 5}
    assert [s.phase_counts for s in manifest.shards] == [{0: 20}] * 4 + [{1: 10}] * 4
    assert manifest.fields["x_s"] == {"kind": "tensor", "shape": [1, 8, 8], "dtype": "float32"}
    assert manifest.fields["eps_eff"]["shape"] == [1, 8, 8]
    assert manifest.to_dict()["dtype"] == "float32"
    for shard in manifest.shards:
        assert hashlib.sha256((root / "one" / shard.name).read_bytes()).hexdigest() == shard.sha256


def test_records_are_the_teachers_trajectory_on_the_phase_grid(made):
    root, _, module, _ = made
    manifest = load_manifest(root / "one")
    shard = manifest.shards[4]  # phase 1, trajectories 8 and 9
    records = [decode_sample(r, manifest.fields) for r in read_shard_samples(root / "one" / shard.name, shard)]
    traj8 = sorted((r for r in records if r["traj"] == 8), key=lambda r: r["step"])
    grid = module.flow.grid(5).float()
    assert [r["steps"] for r in traj8] == [5] * 5 and [r["order"] for r in traj8] == [2] * 5
    assert [r["s"] for r in traj8] == pytest.approx(grid[:-1].tolist())
    assert [r["t"] for r in traj8] == pytest.approx(grid[1:].tolist())
    # the first point is trajectory 8's initial noise, a function of (seed, index) alone
    torch.testing.assert_close(traj8[0]["x_s"], noise_for(0, [8], (1, 8, 8))[0])
    assert {r["cond"] for r in traj8} == {int(module.conditions([8])[0])}


def test_shards_are_the_same_bytes_whatever_the_number_of_ranks(made):
    root, spec, _, _ = made
    for rank in (0, 1):
        report = generate_trajectories(tiny_module(spec), SCHEDULE, root / "two", rank=rank,
                                       world_size=2, progress=False)
        assert report.written == list(range(rank, 8, 2))
    assert report.manifest is not None  # the last rank to finish completed the manifest
    assert digests(root / "two") == digests(root / "one")


def test_a_rerun_keeps_finished_shards_and_redoes_missing_or_half_written_ones(made, tmp_path):
    root, spec, _, _ = made
    folder = tmp_path / "resume"
    shutil.copytree(root / "one", folder)
    (folder / "shard-000002.tar").unlink()
    (folder / "shard-000005.tar.json").unlink()  # interrupted after the tar, before its entry
    (folder / ".shard-000005.tar.tmp.123").write_bytes(b"half")
    report = generate_trajectories(tiny_module(spec), SCHEDULE, folder, progress=False)
    assert report.written == [2, 5] and report.kept == [0, 1, 3, 4, 6, 7]
    assert digests(folder) == digests(root / "one")
    assert not list(folder.glob(".*.tmp*"))


def test_a_folder_made_under_another_config_is_refused_and_left_alone(made):
    root, spec, _, _ = made
    before = digests(root / "one")
    with pytest.raises(ManifestMismatchError, match=r"meta\.guidance_scale: expected 1\.0, found 2\.0"):
        generate_trajectories(tiny_module(spec, guidance_scale=2.0), SCHEDULE, root / "one",
                              progress=False)
    assert digests(root / "one") == before


def test_trajectories_per_phase_must_fill_whole_shards(made, tmp_path):
    _, spec, _, _ = made
    module = tiny_module(spec, generation={"trajectories_per_phase": [4, 3], "trajectories_per_shard": 2})
    with pytest.raises(ValueError, match=r"trajectories_per_phase\[1\] = 3 must be a positive multiple "
                                         r"of trajectories_per_shard = 2"):
        generate_trajectories(module, SCHEDULE, tmp_path / "x", progress=False)


def test_phase_layout_maps_trajectories_to_consecutive_phase_blocks():
    layout = PhaseLayout((4, 2, 6))
    assert [layout.phase_of(i) for i in range(12)] == [0] * 4 + [1] * 2 + [2] * 6
    with pytest.raises(IndexError):
        layout.phase_of(12)
