"""Write trajectory points to WebDataset tar shards: deterministic, resumable, multi-rank.

The unit of work is a trajectory index. The caller supplies
``rollout_fn(traj_indices: list[int]) -> list[dict]``, which must return the records of exactly
those trajectories (schema in :mod:`saq_lightning.data.records`) and must be a pure function of
the indices (seed every trajectory's noise from its index), so that any shard can be redone and
come out byte-identical.

Shard ``k`` holds the fixed trajectory range ``[k * trajectories_per_shard, ...)``. Rank ``r`` of
``world_size`` writes the shards ``k % world_size == r``. A shard is written under a temporary
name and renamed when complete; its manifest entry (``shard-K.tar.json``: count, counts per
phase, field shapes, size, sha256, layout digest) is written after the rename. On a rerun, a shard
whose entry exists and whose file matches it is kept; anything else is redone. When every shard
has its entry, ``manifest.json`` is completed (by whichever rank finishes last).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import webdataset as wds

from saq_lightning.files import atomic_path, sha256_file
from saq_lightning.mismatches import diff_values, format_mismatches

from .errors import ManifestError, ManifestMismatchError
from .manifest import (
    MANIFEST_NAME,
    Layout,
    Manifest,
    ShardInfo,
    load_manifest,
    shard_name,
    write_json_atomic,
)
from .records import encode_record

log = logging.getLogger(__name__)

RolloutFn = Callable[[list[int]], Sequence[Mapping[str, Any]]]
ENTRY_SUFFIX = ".json"


@dataclass
class WriteReport:
    """What one call of :func:`write_trajectory_shards` did."""

    folder: Path
    written: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    #: The complete manifest when every shard (of every rank) exists, else ``None``.
    manifest: Manifest | None = None


def _entry_path(folder: Path, index: int) -> Path:
    return folder / (shard_name(index) + ENTRY_SUFFIX)


def _claim_folder(folder: Path, layout: Layout) -> None:
    """Refuse a folder whose manifest was written with another layout; else record ours."""
    path = folder / MANIFEST_NAME
    if path.exists():
        existing = load_manifest(folder, require_complete=False)
        mismatches = diff_values(existing.layout.to_dict(), layout.to_dict(), "", subset=False)
        if mismatches:
            raise ManifestMismatchError(
                format_mismatches(
                    f"refusing to write into {folder}: its {MANIFEST_NAME} was written with "
                    f"another configuration (expected = existing, found = new; use another "
                    f"folder or delete this one)",
                    mismatches,
                ),
                mismatches,
            )
        return
    Manifest(layout=layout).save(folder)


def _kept_shard(folder: Path, layout: Layout, index: int, verify: str) -> str | None:
    """``None`` if shard ``index`` is complete and matches its entry, else why it must be redone."""
    tar, entry = folder / shard_name(index), _entry_path(folder, index)
    if not entry.is_file():
        return "no manifest entry (never finished)"
    if not tar.is_file():
        return "shard file missing"
    try:
        info = ShardInfo.from_dict(json.loads(entry.read_text()))
    except (ValueError, KeyError) as exc:
        return f"unreadable manifest entry ({exc})"
    if info.layout_digest != layout.digest():
        return "entry belongs to another layout"
    if (info.first_traj, info.end_traj) != layout.shard_range(index):
        return "entry covers other trajectories"
    if tar.stat().st_size != info.bytes:
        return f"size {tar.stat().st_size} != {info.bytes} bytes in its entry (truncated?)"
    if verify == "sha256" and sha256_file(tar) != info.sha256:
        return "sha256 differs from its entry (corrupt?)"
    return None


def _remove_leftovers(folder: Path, index: int) -> None:
    name = shard_name(index)
    for stale in folder.glob(f".{name}.tmp*"):
        stale.unlink(missing_ok=True)
    _entry_path(folder, index).unlink(missing_ok=True)
    (folder / name).unlink(missing_ok=True)


@dataclass
class _ShardContents:
    count: int = 0
    phase_counts: dict[int, int] = field(default_factory=dict)
    fields: dict[str, dict[str, Any]] | None = None


def _fill_shard(
    writer: wds.TarWriter,
    name: str,
    layout: Layout,
    trajectories: range,
    rollout_fn: RolloutFn,
    rollout_batch_size: int,
    on_progress: Callable[[int], None],
) -> _ShardContents:
    contents = _ShardContents()
    expected_shape = layout.meta.get("image_shape")
    for lo in range(trajectories.start, trajectories.stop, rollout_batch_size):
        chunk = list(range(lo, min(lo + rollout_batch_size, trajectories.stop)))
        asked = set(chunk)
        per_traj: dict[int, int] = {}
        for record in rollout_fn(chunk):
            traj = int(record["traj"]) if "traj" in record else -1
            if traj not in asked:
                raise ValueError(f"rollout_fn({chunk[0]}..{chunk[-1]}) returned a record of "
                                 f"trajectory {traj}, which it was not asked for")
            key = f"{traj:09d}_{per_traj.get(traj, 0):05d}"
            per_traj[traj] = per_traj.get(traj, 0) + 1
            sample, fields = encode_record(record, key, layout.storage_dtype)
            if contents.fields is None:
                contents.fields = fields
                shape = fields["x_s"]["shape"]
                if expected_shape is not None and list(expected_shape) != shape:
                    raise ValueError(f"record x_s shape {shape} differs from meta image_shape "
                                     f"{list(expected_shape)}")
            elif fields != contents.fields:
                raise ValueError(f"record {key} of shard {name} has fields {fields}, earlier "
                                 f"records had {contents.fields}")
            writer.write(sample)
            phase = int(record["phase"])
            contents.phase_counts[phase] = contents.phase_counts.get(phase, 0) + 1
            contents.count += 1
        missing = sorted(asked - set(per_traj))
        if missing:
            raise ValueError(f"rollout_fn returned no records for trajectories {missing}")
        on_progress(len(chunk))
    return contents


def _write_shard(
    folder: Path,
    layout: Layout,
    index: int,
    rollout_fn: RolloutFn,
    rollout_batch_size: int,
    on_progress: Callable[[int], None],
) -> ShardInfo:
    _remove_leftovers(folder, index)
    name = shard_name(index)
    first, end = layout.shard_range(index)
    with atomic_path(folder / name) as tmp:
        with open(tmp, "wb") as stream:
            # mtime=0 and fixed owner/mode: a redone shard is byte-identical to the first one.
            writer = wds.TarWriter(stream, encoder=False, mtime=0.0)
            try:
                contents = _fill_shard(writer, name, layout, range(first, end), rollout_fn,
                                       rollout_batch_size, on_progress)
            finally:
                writer.close()
            stream.flush()
            os.fsync(stream.fileno())
        info = ShardInfo(
            index=index,
            name=name,
            first_traj=first,
            end_traj=end,
            count=contents.count,
            phase_counts=dict(sorted(contents.phase_counts.items())),
            bytes=tmp.stat().st_size,
            sha256=sha256_file(tmp),
            fields=contents.fields or {},
            layout_digest=layout.digest(),
        )
    write_json_atomic(_entry_path(folder, index), info.to_dict())
    return info


def merge_manifest(folder: str | Path) -> Manifest | None:
    """Complete ``manifest.json`` from the shard entries once every shard exists, else ``None``.

    Safe to call from several ranks at once: the result is deterministic and written atomically.
    """
    folder = Path(folder)
    spec = load_manifest(folder, require_complete=False)
    layout = spec.layout
    infos: list[ShardInfo] = []
    for index in range(layout.num_shards):
        entry, tar = _entry_path(folder, index), folder / shard_name(index)
        if not entry.is_file() or not tar.is_file():
            return None
        info = ShardInfo.from_dict(json.loads(entry.read_text()))
        if info.layout_digest != layout.digest() or tar.stat().st_size != info.bytes:
            return None
        if infos and info.fields != infos[0].fields:
            raise ManifestError(f"{tar}: record fields {info.fields} differ from "
                                f"{infos[0].name}'s {infos[0].fields}")
        infos.append(info)
    manifest = Manifest(layout=layout, shards=tuple(infos), complete=True, fields=infos[0].fields)
    if not (spec.complete and spec.to_dict() == manifest.to_dict()):
        manifest.save(folder)
    return manifest


def _progress_bar(enabled: bool, total: int, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
    task = bar.add_task(description, total=total)
    return bar, task


def write_trajectory_shards(
    folder: str | Path,
    rollout_fn: RolloutFn,
    *,
    num_trajectories: int,
    trajectories_per_shard: int,
    meta: Mapping[str, Any],
    storage_dtype: str = "float32",
    rollout_batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    verify_existing: Literal["sha256", "size"] = "sha256",
    progress: bool = True,
) -> WriteReport:
    """Write (or finish writing) this rank's shards of a trajectory folder.

    Args:
        folder: output folder; created if needed.
        rollout_fn: ``traj_indices -> records`` of exactly those trajectories; pure function.
        num_trajectories: trajectory indices ``0 .. num_trajectories - 1``.
        trajectories_per_shard: trajectories per shard (the last shard may hold fewer).
        meta: caller facts stored in the manifest and compared on every rerun (model id,
            schedule, image shape, phases, seed, ...). JSON-serialisable.
        storage_dtype: ``float32``, ``float16`` or ``bfloat16`` for float tensors.
        rollout_batch_size: trajectories per ``rollout_fn`` call (default: one shard's worth).
        rank, world_size: this process writes the shards ``k % world_size == rank``.
        verify_existing: how finished shards are checked before being kept (``sha256`` reads
            them; ``size`` only compares sizes).
        progress: show a rich progress bar.

    Raises:
        ManifestMismatchError: the folder's manifest was written with another layout/meta.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if verify_existing not in ("sha256", "size"):
        raise ValueError(f"verify_existing must be 'sha256' or 'size', got {verify_existing!r}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ManifestError(f"{folder}: is a file, but trajectory shards are written to a folder "
                            "(data.shards names the folder); give a new or existing folder")
    folder.mkdir(parents=True, exist_ok=True)
    layout = Layout(dict(meta), num_trajectories, trajectories_per_shard, storage_dtype)
    batch = rollout_batch_size or trajectories_per_shard
    if batch < 1:
        raise ValueError(f"rollout_batch_size must be >= 1, got {batch}")
    _claim_folder(folder, layout)
    mine = [k for k in range(layout.num_shards) if k % world_size == rank]
    report = WriteReport(folder=folder)
    total = sum(end - first for first, end in map(layout.shard_range, mine))
    bar, task = _progress_bar(progress, total, f"trajectories (rank {rank})")
    with bar:
        for index in mine:
            reason = _kept_shard(folder, layout, index, verify_existing)
            first, end = layout.shard_range(index)
            if reason is None:
                report.kept.append(index)
                bar.advance(task, end - first)
                continue
            if (folder / shard_name(index)).exists() or _entry_path(folder, index).exists():
                log.warning("redoing %s: %s", folder / shard_name(index), reason)
            _write_shard(folder, layout, index, rollout_fn, batch,
                         lambda n: bar.advance(task, n))
            report.written.append(index)
    report.manifest = merge_manifest(folder)
    return report
