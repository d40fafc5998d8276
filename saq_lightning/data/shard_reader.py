"""Read one trajectory shard: verify it against its manifest entry, parse it, select phases.

A shard is read whole into memory (shards are the unit of shuffling), so its size and sha256 are
checked before any record is used: a truncated or corrupt shard is an error that names the file,
never a silently short or wrong batch.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from webdataset.tariterators import group_by_keys, tar_file_iterator

from saq_lightning.files import sha256_file

from .errors import ShardError
from .manifest import ShardInfo
from .records import META_ENTRY

Verify = Literal["sha256", "size", "none"]


def check_shard_file(path: Path, info: ShardInfo, verify: Verify = "sha256") -> str | None:
    """``None`` if the file matches its manifest entry, else the reason (missing/size/sha256)."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != info.bytes:
        return f"size {size} bytes, manifest says {info.bytes} (truncated or rewritten)"
    if verify == "sha256" and sha256_file(path) != info.sha256:
        return "sha256 differs from the manifest (corrupt)"
    return None


def _verified_bytes(path: Path, info: ShardInfo, verify: Verify) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ShardError(f"{path}: cannot read shard ({exc})") from exc
    if verify != "none" and len(data) != info.bytes:
        raise ShardError(f"{path}: size {len(data)} bytes, manifest says {info.bytes} "
                         f"(truncated or rewritten)")
    if verify == "sha256" and hashlib.sha256(data).hexdigest() != info.sha256:
        raise ShardError(f"{path}: sha256 differs from the manifest (corrupt shard)")
    return data


def _parse(path: Path, data: bytes) -> list[dict[str, Any]]:
    try:
        files = ({**f, "__url__": str(path)} for f in tar_file_iterator(io.BytesIO(data)))
        return list(group_by_keys(files))
    except Exception as exc:  # tarfile/webdataset raise a variety of errors on bad input
        raise ShardError(f"{path}: not a readable tar shard ({type(exc).__name__}: {exc})") from exc


def read_shard_samples(
    path: str | Path,
    info: ShardInfo,
    phases: Iterable[int] | None = None,
    verify: Verify = "sha256",
) -> list[dict[str, Any]]:
    """Raw samples (entry name -> bytes, plus ``__key__``) of the given phases, in file order.

    Raises:
        ShardError: the file is missing, truncated, corrupt, or its record count differs from
            the manifest.
    """
    path = Path(path)
    samples = _parse(path, _verified_bytes(path, info, verify))
    if len(samples) != info.count:
        raise ShardError(f"{path}: {len(samples)} records, manifest says {info.count}")
    if phases is None:
        return samples
    wanted = {int(p) for p in phases}
    selected = []
    for sample in samples:
        try:
            phase = int(json.loads(sample[META_ENTRY])["phase"])
        except (KeyError, ValueError, TypeError) as exc:
            raise ShardError(f"{path}: record {sample.get('__key__')} has no readable phase "
                             f"({exc})") from exc
        if phase in wanted:
            selected.append(sample)
    return selected
