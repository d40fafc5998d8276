"""What a trajectory folder's manifest must say for a run (fit, ptq, a resumed generate) to use it.

Apart from :mod:`.generation` (which writes the folders and needs the module) so that the module
can check manifests without importing its writer.

A manifest records where its trajectories come from: the teacher (spec *and* a fingerprint of its
weights), the solver step that made the rollouts and targets (family, class and every setting,
among them the rule that places singlestep intermediate points), the generation settings that
fix which trajectories exist (noise seed, count per phase, storage dtype) and the version of the
generator. A run refuses a folder that differs in any of them: the trajectories would silently
be another teacher's, another rule's or another seed's while the run's config says otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from saq_lightning.data.errors import ManifestMismatchError
from saq_lightning.data.manifest import Manifest
from saq_lightning.data.mixstep import MixStepPhase
from saq_lightning.mismatches import diff_values

#: the version of the trajectory writer; bumped whenever the same config makes other trajectories
#: (2: singlestep intermediate points by the grid's spacing rule, DPM-Solver's reference rule,
#: instead of lambda-fractions; the teacher fingerprint, solver step and generation settings are
#: recorded). Folders of another version are refused, not reused.
GENERATOR = "saq_lightning.generate/2"

#: manifest meta fields a run must agree with (the rest describes how the data is stored)
CHECKED_META = ("generator", "model_id", "teacher", "teacher_fingerprint", "schedule", "image_shape",
                "teacher_solver", "teacher_step", "spacing", "guidance_scale", "conditions",
                "seed", "trajectories_per_phase")

FIX = ("regenerate them with `generate` and this config into a new folder (data.shards), "
       "or delete this folder first")


def solver_step_meta(solver: Any) -> dict[str, Any]:
    """The solver that makes the rollouts and targets, as plain data: its class and every setting
    (for singlestep DPM-Solver the intermediate-point rule ``intermediate`` and ``spacing``)."""
    settings = {f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)
                if f.name != "schedule" and not f.name.startswith("_")}
    return {"class": type(solver).__name__, **settings}


def generation_meta(settings: Any, num_phases: int) -> dict[str, Any]:
    """The generation settings that decide which trajectories a folder holds."""
    return {"seed": settings.seed, "trajectories_per_phase": settings.per_phase(num_phases)}


def _one_line(mismatches: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{name}: expected {exp!r}, found {got!r}" for name, exp, got in mismatches)


def check_generator(found: Mapping[str, Any], source: str) -> None:
    """Refuse a folder written by another version of the generator (or before it was recorded)."""
    version = found.get("generator")
    if version != GENERATOR:
        written = f"by {version}" if version else "before the generator version was recorded"
        raise ManifestMismatchError(
            f"{source}: the trajectories were written {written}, this version writes {GENERATOR} "
            f"(intermediate points by the spacing rule; teacher fingerprint and generation settings "
            f"recorded) and does not reuse them: {FIX}", [("generator", GENERATOR, version)])


def check_teacher_weights(found: Mapping[str, Any], fingerprint: str, source: str) -> None:
    """Refuse trajectories of a teacher whose weights differ from this run's."""
    recorded = found.get("teacher_fingerprint")
    if recorded != fingerprint:
        raise ManifestMismatchError(
            f"{source}: the trajectories were made by a teacher with other weights (fingerprint "
            f"{recorded}, this run's teacher {fingerprint}): {FIX}",
            [("teacher_fingerprint", fingerprint, recorded)])


def check_trajectory_meta(found: Mapping[str, Any], expected: Mapping[str, Any], source: str) -> None:
    """Raise :class:`ManifestMismatchError` (one line) naming every checked field that differs."""
    check_generator(found, source)
    if "teacher_fingerprint" in expected:
        check_teacher_weights(found, expected["teacher_fingerprint"], source)
    mismatches = []
    for key in CHECKED_META:
        if key in expected:
            mismatches += diff_values(expected[key], found.get(key, "<missing>"), key, subset=False)
    if mismatches:
        raise ManifestMismatchError(
            f"{source}: the trajectories were made for another configuration (expected = this "
            f"run, found = manifest: {_one_line(mismatches)}); {FIX}", mismatches)


def check_trajectory_folder(manifest: Manifest, module: Any, source: str) -> None:
    """Everything a run (``module``: its ``SAQSetup``, or the LightningModule around one) must
    agree on with a folder: the checked meta, the generation settings for the folder's number of
    phases and the storage dtype. The phases themselves are compared with the mixstep schedule
    by the data module."""
    expected = module.expected_trajectory_meta()
    check_generator(manifest.meta, source)
    phases = manifest.meta.get("phases")
    if phases:
        expected.update(generation_meta(module.generation, len(phases)))
    check_trajectory_meta(manifest.meta, expected, source)
    dtype = module.generation.storage_dtype
    if manifest.layout.storage_dtype != dtype:
        raise ManifestMismatchError(
            f"{source}: the trajectories are stored as {manifest.layout.storage_dtype}, this run's "
            f"generation.storage_dtype is {dtype}; {FIX}",
            [("storage_dtype", dtype, manifest.layout.storage_dtype)])


def manifest_phases(manifest: Manifest) -> list[MixStepPhase] | None:
    """The phases a trajectory folder was made for (``None`` if its meta has none)."""
    phases = manifest.meta.get("phases")
    if phases is None:
        return None
    return [MixStepPhase(**dict(p)) for p in phases]
