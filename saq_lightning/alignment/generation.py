"""Teacher trajectories -> WebDataset shards (the library behind ``python -m saq_lightning generate``).

Layout: phase ``p`` of the mixstep schedule owns ``trajectories_per_phase[p]`` consecutive
trajectory indices (a multiple of ``trajectories_per_shard``, so every shard holds one phase).
Trajectory ``i`` starts from ``x_T = noise(seed, i)`` with condition ``cond(seed, i)`` and is the
teacher's order-k rollout over the phase's grid; every step is one record (``x_s``, ``s``, ``t``,
``order``, ``steps``, ``phase``, ``cond`` and, unless disabled, the target ``eps_eff``; with a
multistep teacher or student solver also ``x_hist``, the previous grid states).

A shard's records are a pure function of the seed and its trajectory indices (the rollout batch
is part of the manifest), which is what makes the shard writer's resume and multi-rank
splitting safe. The manifest records the provenance a run checks (:mod:`.trajectory_meta`: the
teacher's fingerprint, the solver step and its intermediate-point rule, seed and counts, the
generator version ``GENERATOR``); a folder that differs is refused, never resumed.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from saq_lightning.data.manifest import MANIFEST_NAME, load_manifest
from saq_lightning.data.mixstep import MixStepPhase, MixStepSchedule
from saq_lightning.data.shard_writer import WriteReport, write_trajectory_shards
from saq_lightning.data.trajectory_pairs import PAIRS_META, add_pairs
from saq_lightning.data.trajectory_records import trajectory_records

from .conditions import ConditionSource, noise_for
from .settings import GenerationSettings
from .setup import SAQSetup
from .teacher_flow import TeacherFlow
from .trajectory_meta import check_generator, check_teacher_weights, generation_meta
from .validation import VALIDATION_SEED_OFFSET

#: subfolder of the trajectory folder holding the held-out validation trajectories
VALIDATION_FOLDER = "val"


@dataclass(frozen=True)
class PhaseLayout:
    """Which trajectory indices belong to which phase (consecutive blocks)."""

    counts: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def phase_of(self, traj: int) -> int:
        if not 0 <= traj < self.total:
            raise IndexError(f"trajectory {traj} outside 0..{self.total - 1}")
        ends = [sum(self.counts[: p + 1]) for p in range(len(self.counts))]
        return bisect.bisect_right(ends, traj)


def trajectory_meta(
    setup: SAQSetup, schedule: MixStepSchedule, settings: GenerationSettings | None = None
) -> dict[str, Any]:
    """The manifest ``meta`` of ``setup``'s trajectories under ``schedule``: the provenance a run
    checks (teacher and its fingerprint, solver step, generator version, seed, counts) and how
    the records are stored."""
    settings = settings or setup.generation
    meta = setup.expected_trajectory_meta()
    meta.update(generation_meta(settings, schedule.num_phases))
    meta.update({
        "phases": schedule.to_dict()["phases"],
        "rollout_batch_size": settings.rollout_batch_size or settings.trajectories_per_shard,
        "targets": "eps_eff" if settings.store_targets else None,
    })
    if settings.store_pairs:
        meta["pairs"] = PAIRS_META
    return meta


class TrajectoryRollout:
    """``rollout_fn`` for :func:`write_trajectory_shards`: records of the asked trajectories."""

    def __init__(
        self,
        flow: TeacherFlow,
        phases: Sequence[MixStepPhase],
        layout: PhaseLayout,
        conditions: ConditionSource,
        seed: int,
        store_targets: bool = True,
        device: torch.device | str = "cpu",
        store_pairs: bool = False,
    ) -> None:
        self.flow = flow
        self.phases = list(phases)
        self.layout = layout
        self.conditions = conditions
        self.seed = int(seed)
        self.store_targets = store_targets
        self.store_pairs = store_pairs
        if store_pairs:
            bad = [p for p in self.phases if p.teacher_order != 2 or p.teacher_steps != p.student_steps]
            if bad:
                raise ValueError(f"generation.store_pairs needs teacher_order 2 and teacher_steps == "
                                 f"student_steps in every phase (DPM-Solver-2 intermediate points); "
                                 f"phases {bad} are not")
        self.device = torch.device(device)

    def __call__(self, traj_indices: list[int]) -> list[dict[str, Any]]:
        by_phase: dict[int, list[int]] = {}
        for i in traj_indices:
            by_phase.setdefault(self.layout.phase_of(int(i)), []).append(int(i))
        records: list[dict[str, Any]] = []
        model = self.flow.model
        dtype = next(model.unet.parameters()).dtype
        for p, idx in sorted(by_phase.items()):
            x_T = noise_for(self.seed, idx, model.sample_shape, self.device, dtype)
            cond = self.conditions(idx, device=self.device)
            traj = self.flow.rollout(x_T, cond, self.phases[p], keep_evaluations=self.store_pairs)
            recs = trajectory_records(traj, idx, phase=p, cond=cond,
                                      history=self.flow.history_size(self.phases))
            if self.store_pairs:
                add_pairs(recs, traj)
            if not self.store_targets:
                for r in recs:
                    r.pop("eps_eff", None)
            records += recs
        return records


def refuse_stale_folder(folder: Path, meta: dict[str, Any]) -> None:
    """A folder written by another generator version or another teacher's weights is refused in
    one line (before the writer's field-by-field layout check), never resumed or kept."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return
    found = load_manifest(folder, require_complete=False).meta
    check_generator(found, str(path))
    check_teacher_weights(found, meta["teacher_fingerprint"], str(path))


def generate_trajectories(
    setup: SAQSetup,
    schedule: MixStepSchedule,
    folder: str | Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> WriteReport:
    """Write (or finish writing) this rank's shards of ``setup``'s teacher trajectories.

    Rerunning the same command resumes: finished shards are verified and kept, half-written ones
    redone. A folder made under another configuration is refused (nothing is overwritten).
    """
    settings = setup.generation
    counts = settings.per_phase(schedule.num_phases)
    schedule.check_buckets(setup.policy.n_buckets)
    setup.bind_bucket_map(schedule.phases)  # a grid the buckets cannot serve fails here, not in fit
    if device is not None:
        setup.to(device)
    device = next(setup.teacher.unet.parameters()).device
    rollout = TrajectoryRollout(setup.flow, schedule.phases, PhaseLayout(tuple(counts)),
                                setup.conditions, settings.seed, settings.store_targets, device,
                                settings.store_pairs)
    meta = trajectory_meta(setup, schedule, settings)
    refuse_stale_folder(Path(folder), meta)
    report = write_trajectory_shards(
        folder, rollout,
        num_trajectories=sum(counts),
        trajectories_per_shard=settings.trajectories_per_shard,
        meta=meta,
        storage_dtype=settings.storage_dtype,
        rollout_batch_size=settings.rollout_batch_size,
        rank=rank, world_size=world_size, progress=progress,
    )
    if settings.validation_trajectories_per_phase:
        write_validation_trajectories(setup, schedule, Path(folder) / VALIDATION_FOLDER, device,
                                      rank=rank, world_size=world_size, progress=progress)
    return report


def write_validation_trajectories(
    setup: SAQSetup, schedule: MixStepSchedule, folder: Path, device: torch.device,
    *, rank: int = 0, world_size: int = 1, progress: bool = True,
) -> WriteReport:
    """The held-out validation trajectories (``alignment/validation.py``): one shard per phase."""
    n = setup.generation.validation_trajectories_per_phase
    settings = replace(setup.generation, trajectories_per_phase=n, trajectories_per_shard=n,
                       rollout_batch_size=None,
                       seed=setup.generation.seed + VALIDATION_SEED_OFFSET)
    rollout = TrajectoryRollout(setup.flow, schedule.phases, PhaseLayout((n,) * schedule.num_phases),
                                setup.conditions, settings.seed, settings.store_targets, device)
    meta = {**trajectory_meta(setup, schedule, settings), "split": "validation"}
    refuse_stale_folder(folder, meta)
    return write_trajectory_shards(
        folder, rollout, num_trajectories=n * schedule.num_phases, trajectories_per_shard=n,
        meta=meta,
        storage_dtype=settings.storage_dtype, rank=rank, world_size=world_size, progress=progress)
