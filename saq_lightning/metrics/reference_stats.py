"""Reference statistics in Inception space, computed once per (reference file, network) and cached.

A cache file ``<stem>.inception.<key16>.stats.npz`` holds ``mu``/``sigma`` (pool_3), ``mu_s`` /
``sigma_s`` (sFID's spatial features; ``basis``/``basis_s`` too for references of fewer images
than feature dimensions, see ``feature_stats``), up to ``max_features`` pool features (for KID and
precision/recall; a seeded random subset when the reference is larger) and a ``meta`` JSON
string: the full key (SHA-256 of the reference file, of the Inception weights, and of the
settings), the image shape and counts. An existing cache file whose key differs is an error, never
silently replaced. A file of this layout can itself be given as the reference.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saq_lightning.files import atomic_path

from .feature_stats import FeatureStats

STATS_FORMAT = "saq_lightning.reference_stats/1"


@dataclass(frozen=True)
class InceptionReference:
    """Inception-space statistics of a reference set."""

    pool: FeatureStats
    spatial: FeatureStats
    features: np.ndarray  # [M, 2048] float32 pool features (M <= max_features)
    image_shape: tuple[int, int, int]  # (H, W, C) of the reference images
    meta: dict[str, Any]

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temporary name, then rename)."""
        path = Path(path)
        meta = {**self.meta, "format": STATS_FORMAT, "image_shape": list(self.image_shape),
                "n": self.pool.n}
        bases = {k: v for k, v in (("basis", self.pool.basis), ("basis_s", self.spatial.basis)) if v is not None}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, mu=self.pool.mu, sigma=self.pool.sigma, mu_s=self.spatial.mu, sigma_s=self.spatial.sigma,
                     features=self.features.astype(np.float32), meta=np.asarray(json.dumps(meta, sort_keys=True)),
                     **bases)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> InceptionReference:
        path = Path(path)
        with np.load(path, allow_pickle=False) as data:
            missing = {"mu", "sigma", "mu_s", "sigma_s", "features", "meta"} - set(data.files)
            if missing:
                raise ValueError(f"{path} is not a reference-statistics file of this package (lacks {sorted(missing)})")
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != STATS_FORMAT:
                raise ValueError(f"{path}: statistics format {meta.get('format')!r}, expected {STATS_FORMAT!r}")
            n = int(meta["n"])
            basis = data["basis"] if "basis" in data.files else None
            basis_s = data["basis_s"] if "basis_s" in data.files else None
            return cls(
                FeatureStats(data["mu"], data["sigma"], n, basis), FeatureStats(data["mu_s"], data["sigma_s"], n, basis_s),
                data["features"], tuple(meta["image_shape"]), meta,
            )


def is_stats_file(path: str | os.PathLike) -> bool:
    """True for an ``.npz`` with this module's layout (rather than reference images)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "meta" in data.files and "mu" in data.files and "arr_0" not in data.files
    except (OSError, ValueError):
        return False


def cache_key(reference_sha: str, weights_sha: str, settings: dict[str, Any]) -> str:
    blob = json.dumps({"reference": reference_sha, "weights": weights_sha, "settings": settings,
                       "format": STATS_FORMAT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cache_path(reference: Path, cache_dir: Path | None, key: str) -> Path:
    folder = cache_dir if cache_dir is not None else reference.parent
    return folder / f"{reference.stem}.inception.{key[:16]}.stats.npz"


def load_cached(path: Path, key: str) -> InceptionReference | None:
    """The cached statistics at ``path`` if present; an error if the file there has another key."""
    if not path.is_file():
        return None
    ref = InceptionReference.load(path)
    if ref.meta.get("key") != key:
        raise FileExistsError(
            f"{path} exists but holds statistics of another reference/network (key {ref.meta.get('key')!r}, "
            f"expected {key!r}); delete it or choose another --stats_cache folder"
        )
    return ref


def store_cached(ref: InceptionReference, path: Path) -> Path | None:
    """Save to ``path`` (an unwritable folder only warns: the statistics are still used)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return ref.save(path)
    except OSError as err:
        warnings.warn(f"could not cache reference statistics at {path}: {err}", stacklevel=2)
        return None
