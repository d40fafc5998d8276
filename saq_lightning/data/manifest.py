"""``manifest.json`` of a trajectory-shard folder: layout, per-shard counts and checksums, checks.

The *layout* (caller meta, number of trajectories, trajectories per shard, storage dtype) fixes
which trajectory indices every shard holds; it must agree between runs writing into one folder.
Shard ``k`` holds trajectories ``[k * trajectories_per_shard, (k + 1) * trajectories_per_shard)``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saq_lightning.files import write_text_atomic
from saq_lightning.mismatches import (
    MISSING,
    canonical_json,
    diff_values,
    format_mismatches,
    json_default,
    plain,
)

from .errors import ManifestError, ManifestMismatchError

MANIFEST_NAME = "manifest.json"
FORMAT = "saq-trajectories"
VERSION = 1


def shard_name(index: int) -> str:
    """File name of shard ``index`` (``shard-000003.tar``)."""
    return f"shard-{index:06d}.tar"


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON under a temporary name and rename it: readers never see half a file."""
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True, default=json_default) + "\n")


@dataclass(frozen=True)
class Layout:
    """What must agree between all runs that write into one folder."""

    meta: dict[str, Any]
    num_trajectories: int
    trajectories_per_shard: int
    storage_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.num_trajectories < 1 or self.trajectories_per_shard < 1:
            raise ValueError("num_trajectories and trajectories_per_shard must be >= 1")
        object.__setattr__(self, "meta", plain(dict(self.meta)))

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_trajectories / self.trajectories_per_shard)

    def shard_range(self, index: int) -> tuple[int, int]:
        """Trajectory indices ``[first, end)`` of shard ``index``."""
        first = index * self.trajectories_per_shard
        return first, min(first + self.trajectories_per_shard, self.num_trajectories)

    def to_dict(self) -> dict[str, Any]:
        return {
            "meta": self.meta,
            "num_trajectories": self.num_trajectories,
            "trajectories_per_shard": self.trajectories_per_shard,
            "storage_dtype": self.storage_dtype,
        }

    def digest(self) -> str:
        """sha256 of the canonical layout: stored in every shard's entry to tie it to the run."""
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """One shard's manifest entry."""

    index: int
    name: str
    first_traj: int
    end_traj: int
    count: int
    phase_counts: dict[int, int]
    bytes: int
    sha256: str
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)
    layout_digest: str = ""

    def count_for(self, phases: Iterable[int] | None) -> int:
        """Number of records of the given phases (all records for ``None``)."""
        if phases is None:
            return self.count
        return sum(self.phase_counts.get(int(p), 0) for p in phases)

    def to_dict(self, entry: bool = True) -> dict[str, Any]:
        """``entry=True``: the stand-alone entry file (with fields and layout digest)."""
        d = {
            "index": self.index,
            "name": self.name,
            "trajectories": [self.first_traj, self.end_traj],
            "count": self.count,
            "phase_counts": {str(k): v for k, v in sorted(self.phase_counts.items())},
            "bytes": self.bytes,
            "sha256": self.sha256,
        }
        if entry:
            d["fields"] = self.fields
            d["layout_digest"] = self.layout_digest
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardInfo:
        return cls(
            index=int(d["index"]),
            name=str(d["name"]),
            first_traj=int(d["trajectories"][0]),
            end_traj=int(d["trajectories"][1]),
            count=int(d["count"]),
            phase_counts={int(k): int(v) for k, v in d["phase_counts"].items()},
            bytes=int(d["bytes"]),
            sha256=str(d["sha256"]),
            fields=dict(d.get("fields", {})),
            layout_digest=str(d.get("layout_digest", "")),
        )


@dataclass(frozen=True)
class Manifest:
    """A folder's ``manifest.json``: the layout, and when complete every shard's entry."""

    layout: Layout
    shards: tuple[ShardInfo, ...] = ()
    complete: bool = False
    #: Record fields: ``{"x_s": {"kind": "tensor", "shape": [...], "dtype": ...}, "s": {...}}``.
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def meta(self) -> dict[str, Any]:
        return self.layout.meta

    @property
    def image_shape(self) -> list[int] | None:
        x_s = self.fields.get("x_s")
        return list(x_s["shape"]) if x_s else None

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)

    @property
    def phase_counts(self) -> dict[int, int]:
        totals: dict[int, int] = {}
        for shard in self.shards:
            for phase, n in shard.phase_counts.items():
                totals[phase] = totals.get(phase, 0) + n
        return dict(sorted(totals.items()))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, "version": VERSION, "complete": self.complete}
        d.update(self.layout.to_dict())
        d["num_shards"] = self.layout.num_shards
        d["layout_digest"] = self.layout.digest()
        if self.complete:
            d["fields"] = self.fields
            d["image_shape"] = self.image_shape
            d["dtype"] = self.layout.storage_dtype
            d["count"] = self.count
            d["phase_counts"] = {str(k): v for k, v in self.phase_counts.items()}
            d["shards"] = [s.to_dict(entry=False) for s in self.shards]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "manifest") -> Manifest:
        if d.get("format") != FORMAT:
            raise ManifestError(f"{source}: not a trajectory manifest (format={d.get('format')!r},"
                                f" expected {FORMAT!r})")
        if int(d.get("version", -1)) != VERSION:
            raise ManifestError(f"{source}: manifest version {d.get('version')!r} is not "
                                f"supported (expected {VERSION})")
        layout = Layout(
            meta=d["meta"],
            num_trajectories=int(d["num_trajectories"]),
            trajectories_per_shard=int(d["trajectories_per_shard"]),
            storage_dtype=str(d["storage_dtype"]),
        )
        shards = tuple(ShardInfo.from_dict(s) for s in d.get("shards", []))
        return cls(layout=layout, shards=shards, complete=bool(d.get("complete", False)),
                   fields=dict(d.get("fields", {})))

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / MANIFEST_NAME
        write_json_atomic(path, self.to_dict())
        return path


def load_manifest(folder: str | Path, require_complete: bool = True) -> Manifest:
    """Read ``folder/manifest.json``; a clear error when it is missing, foreign or incomplete."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest; write the shards first (write_trajectory_shards)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: manifest is not valid JSON ({exc})") from exc
    manifest = Manifest.from_dict(raw, source=str(path))
    if require_complete and not manifest.complete:
        done = sum(1 for k in range(manifest.layout.num_shards)
                   if (Path(folder) / (shard_name(k) + ".json")).is_file())
        raise ManifestError(f"{path}: shard writing is not complete ({done} of "
                            f"{manifest.layout.num_shards} shards done); rerun the generation")
    return manifest


def check_expected(manifest: Manifest, expect: Mapping[str, Any], source: str = "manifest") -> None:
    """Check that the manifest holds what a config expects; error names field, expected, found.

    A key is looked up in the caller's meta first, then among the manifest's own facts
    (``image_shape``, ``dtype``, ``num_trajectories``, ``count``, ...). Nested dicts are compared
    on the expected keys only. ``image_shape`` is always checked against the stored ``x_s`` shape.
    """
    facts = manifest.to_dict()
    mismatches: list[tuple[str, Any, Any]] = []
    for key, value in expect.items():
        if value is None:
            continue
        if key == "image_shape":
            found = manifest.image_shape
        elif key in manifest.meta:
            found = manifest.meta[key]
        else:
            found = facts.get(key, MISSING)
        mismatches += diff_values(value, found, key, subset=True)
    if mismatches:
        raise ManifestMismatchError(
            format_mismatches(f"{source} does not match the configuration", mismatches),
            mismatches,
        )
