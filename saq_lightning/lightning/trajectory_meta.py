"""What a trajectory folder's manifest must say for a run (fit, ptq) to use it.

Apart from :mod:`.generation` (which writes the folders and needs the module) so that the module
can check manifests without importing its writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saq_lightning.data.errors import ManifestMismatchError
from saq_lightning.data.manifest import Manifest, diff_values, format_mismatches
from saq_lightning.data.mixstep import MixStepPhase

#: manifest meta fields a training run must agree with (the rest describes how data was made)
CHECKED_META = ("model_id", "teacher", "schedule", "image_shape", "teacher_solver", "spacing",
                "guidance_scale", "conditions")


def check_trajectory_meta(found: Mapping[str, Any], expected: Mapping[str, Any], source: str) -> None:
    """Raise :class:`ManifestMismatchError` naming every checked field that differs."""
    mismatches = []
    for key in CHECKED_META:
        if key in expected:
            mismatches += diff_values(expected[key], found.get(key, "<missing>"), key, subset=False)
    if mismatches:
        raise ManifestMismatchError(
            format_mismatches(f"{source}: the trajectories were made for another configuration "
                              f"(expected = this run, found = manifest); regenerate them with "
                              f"`generate` and this config, or point data.shards elsewhere",
                              mismatches), mismatches)


def manifest_phases(manifest: Manifest) -> list[MixStepPhase] | None:
    """The phases a trajectory folder was made for (``None`` if its meta has none)."""
    phases = manifest.meta.get("phases")
    if phases is None:
        return None
    return [MixStepPhase(**dict(p)) for p in phases]
