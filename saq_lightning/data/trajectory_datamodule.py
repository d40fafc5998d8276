"""``TrajectoryDataModule``: trajectory records from WebDataset shards (or initial noise on the fly)
for training, with equal batch counts on every rank, mixstep phase selection, and exact resume.

How it stays exact and DDP-safe:

* Every batch has a global index ``g``; its phase, its shards and the order of its records are a
  deterministic function of ``(seed, g, rank, worker layout)`` (:mod:`.batch_plan`,
  :mod:`.phase_stream`).
* Every rank yields exactly ``batches_per_epoch`` batches per epoch; a rank whose shards run out
  starts another (reshuffled) pass over them instead of stopping early, so no collective hangs.
* The module records the index of each batch the trainer consumes (``on_before_batch_transfer``)
  and stores the next index in the checkpoint (``state_dict``); a resumed run starts there.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from saq_lightning.mismatches import diff_values, format_mismatches
from saq_lightning.ranks import rank_world

from .batch_check import check_finite_batch
from .batch_plan import BatchPlan, Selector
from .errors import ManifestError, ManifestMismatchError, ResumeMismatchError, ShardError
from .manifest import (
    Manifest,
    ShardInfo,
    check_expected,
    load_manifest,
)
from .mixstep import MixStepSchedule
from .noise_dataset import NoiseBatches
from .shard_reader import check_shard_file
from .trajectory_dataset import TrajectoryBatches
from .validation_set import validation_batches, validation_folder

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def ignore_sigint(worker_id: int) -> None:
    """``worker_init_fn``: DataLoader workers ignore SIGINT. Ctrl-C in a terminal signals the whole
    process group; a worker it killed would end the run with a DataLoader error before
    ``GracefulStop`` saves at the step boundary. The main process still ends its workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class PositionedDataLoader(DataLoader):
    """A ``DataLoader`` over :class:`TrajectoryBatches`/:class:`NoiseBatches` (batch_size=None).

    The data module restores the position; ``state_dict``/``load_state_dict`` here only tell
    Lightning that this loader resumes mid-epoch correctly (so it does not warn that it would
    not). ``load_state_dict`` deliberately changes nothing: one source of truth.
    """

    def state_dict(self) -> dict[str, Any]:
        return {"next_batch": int(self.dataset.start)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None


class TrajectoryDataModule(pl.LightningDataModule):
    """Training batches of teacher-trajectory points, or of initial noise (on-the-fly mode).

    Args:
        shards: folder with ``manifest.json`` and the shards. ``None`` selects the on-the-fly
            mode, which streams ``x_T`` and class labels (needs ``image_shape`` and
            ``batches_per_epoch``).
        batch_size: records per batch (per rank).
        num_workers: DataLoader workers. Resume is exact for an unchanged worker count.
        seed: seeds shard order, record order and (on the fly) noise and labels.
        batches_per_epoch: batches per epoch on every rank. Default (records mode): one pass
            over the selected records, ``count // (world_size * batch_size)``.
        shuffle_shards: shuffle buffer, in shards: records are shuffled within groups of this
            many shards (memory: that many shards per active phase per worker).
        phases: static phase filter (records mode, without a mixstep schedule).
        expect: manifest facts the run requires, e.g. ``{"model_id": ..., "image_shape":
            [1, 8, 8], "schedule": {...}}``; a mismatch is an error naming the field.
        on_bad_shard: ``raise`` (default): a missing, truncated or corrupt shard is an error
            naming it. ``skip``: every shard is verified in ``setup``; bad ones are left out and
            counted (``skipped_shards``, ``skipped_records``).
        verify: ``sha256`` (default) or ``size``: how shards are checked when read; ``true``:
            also check every shard's sha256 at the start (``setup``, before calibration), so that
            a corrupt shard is found at once, not when it is first read.
        dtype: dtype of float tensors in batches; ``time_dtype``: of ``s`` and ``t``.
        image_shape, num_classes: on-the-fly mode: shape of ``x_T``; number of classes for
            class-balanced labels (``None``: unconditional, no ``cond``).
        mixstep: phase schedule; normally handed over by ``MixStepCallback`` instead.
        strict_resume: a checkpoint saved under another data configuration is an error (else a
            warning and the run continues from the stored batch index).
        pin_memory: passed to the DataLoader.
    """

    def __init__(
        self,
        shards: str | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        batches_per_epoch: int | None = None,
        shuffle_shards: int = 4,
        phases: list[int] | None = None,
        expect: dict[str, Any] | None = None,
        on_bad_shard: Literal["raise", "skip"] = "raise",
        verify: bool | Literal["sha256", "size"] = "sha256",
        dtype: str = "float32",
        time_dtype: str = "float32",
        image_shape: list[int] | None = None,
        num_classes: int | None = None,
        mixstep: MixStepSchedule | None = None,
        strict_resume: bool = True,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if on_bad_shard not in ("raise", "skip"):
            raise ValueError(f"on_bad_shard must be 'raise' or 'skip', got {on_bad_shard!r}")
        if verify not in ("sha256", "size") and not isinstance(verify, bool):
            raise ValueError(f"verify must be true, false, 'sha256' or 'size', got {verify!r}")
        if shards is None and (image_shape is None or batches_per_epoch is None):
            raise ValueError("on-the-fly mode (shards=None) needs image_shape and "
                             "batches_per_epoch")
        self.shards = shards
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle_shards = shuffle_shards
        self.phases = tuple(sorted(set(phases))) if phases is not None else None
        self.expect = dict(expect or {})
        self.on_bad_shard = on_bad_shard
        self.verify_at_start = verify is True
        self.verify = "sha256" if verify is True else ("size" if verify is False else verify)
        self.float_dtype, self.time_dtype = _dtype(dtype), _dtype(time_dtype)
        self.image_shape = list(image_shape) if image_shape is not None else None
        self.num_classes = num_classes
        self.mixstep = mixstep
        self.strict_resume = strict_resume
        self.pin_memory = pin_memory
        self._batches_per_epoch = batches_per_epoch
        self.manifest: Manifest | None = None
        self.skipped_shards: list[str] = []
        self.skipped_records = 0
        self._usable: list[ShardInfo] = []
        self._plan: BatchPlan | None = None
        self._dataset: TrajectoryBatches | NoiseBatches | None = None
        self._next_batch = 0
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ configuration
    @property
    def on_the_fly(self) -> bool:
        return self.shards is None

    @property
    def batches_per_epoch(self) -> int | None:
        """Batches per epoch on every rank (known once the train dataloader is built)."""
        return self._plan.batches_per_epoch if self._plan else self._batches_per_epoch

    @property
    def next_batch_index(self) -> int:
        """Global index of the next training batch (what a checkpoint stores)."""
        return self._next_batch

    def set_mixstep(self, schedule: MixStepSchedule | None) -> None:
        """Hand over the mixstep schedule (``MixStepCallback`` calls this in ``setup``)."""
        if schedule is None or schedule == self.mixstep:
            return
        if self.mixstep is not None:
            raise ValueError("TrajectoryDataModule already has a different mixstep schedule; "
                             "configure it in one place (the MixStepCallback)")
        if self._dataset is not None:
            raise RuntimeError("set the mixstep schedule before the train dataloader is built")
        self.mixstep = schedule

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return rank_world()

    # ------------------------------------------------------------------ setup and checks
    def setup(self, stage: str | None = None) -> None:
        if self.on_the_fly or self.manifest is not None:
            return
        manifest = load_manifest(self.shards)
        expect = dict(self.expect)
        if self.image_shape is not None:
            expect.setdefault("image_shape", self.image_shape)
        check_expected(manifest, expect, source=f"{Path(self.shards) / 'manifest.json'}")
        root = Path(self.shards)
        level = ("sha256" if self.verify_at_start
                 else self.verify if self.on_bad_shard == "skip" else "size")
        bad = [(s, why) for s in manifest.shards
               if (why := check_shard_file(root / s.name, s, level)) is not None]
        if bad and self.on_bad_shard == "raise":
            listed = "; ".join(f"{root / s.name}: {why}" for s, why in bad)
            raise ShardError(f"{listed} (set on_bad_shard='skip' to leave bad shards out)")
        for shard, why in bad:
            log.warning("skipping shard %s: %s", root / shard.name, why)
        self.skipped_shards = [s.name for s, _ in bad]
        self.skipped_records = sum(s.count for s, _ in bad)
        skipped = set(self.skipped_shards)
        self._usable = [s for s in manifest.shards if s.name not in skipped]
        self.manifest = manifest

    def check_schedule(self, schedule: MixStepSchedule | None) -> None:
        """The manifest's phases must be the schedule's (``fit`` calls this in its setup, before
        calibration, so that shards of other phases are refused at once)."""
        if self.manifest is not None:
            self._check_schedule_against_manifest(self.manifest, schedule)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        training = self.trainer is None or self.trainer.training
        if training and not self.on_the_fly and self.manifest is not None and isinstance(batch, dict):
            check_finite_batch(batch, self.manifest.shards, self.shards)
        return batch

    def _check_schedule_against_manifest(self, manifest: Manifest,
                                         schedule: MixStepSchedule | None = None) -> None:
        schedule = schedule if schedule is not None else self.mixstep
        if schedule is None:
            return
        found = manifest.meta.get("phases")
        if found is not None:
            expected = schedule.to_dict()["phases"]
            mismatches = diff_values(expected, found, "phases", subset=True)
            if mismatches:
                raise ManifestMismatchError(
                    format_mismatches(f"{self.shards}: the manifest's phases differ from the "
                                      f"mixstep schedule", mismatches), mismatches)

    def _selector_count(self, selector: Selector) -> int:
        return sum(s.count_for(selector) for s in self._usable)

    def _make_plan(self, world_size: int) -> BatchPlan:
        schedule = self.mixstep
        phases = None if schedule is not None else self.phases
        if self.on_the_fly:
            return BatchPlan(int(self._batches_per_epoch), schedule, phases)
        assert self.manifest is not None
        self._check_schedule_against_manifest(self.manifest)
        selectors = ([(p,) for p in range(schedule.num_phases)] if schedule else [phases])
        for selector in selectors:
            if self._selector_count(selector) == 0:
                raise ManifestError(f"{self.shards}: no records of phase(s) {selector} "
                                    f"(records per phase: {self.manifest.phase_counts}"
                                    f"{', after skipping bad shards' if self.skipped_shards else ''})")
        per_epoch = self._batches_per_epoch
        if per_epoch is None:
            total = sum(self._selector_count(s) for s in selectors)
            per_epoch = max(1, total // (world_size * self.batch_size))
        return BatchPlan(per_epoch, schedule, phases)

    def _check_streams(self, plan: BatchPlan, world_size: int) -> None:
        workers = max(1, self.num_workers)
        for selector in plan.selectors():
            eligible = sum(1 for s in self._usable if s.count_for(selector) > 0)
            if eligible < world_size * workers:
                raise ValueError(
                    f"{self.shards}: phase(s) {selector} are in {eligible} shard(s), fewer than "
                    f"the {world_size} rank(s) x {workers} worker(s) that each need one; write "
                    f"smaller shards (trajectories_per_shard) or use fewer workers")

    # ------------------------------------------------------------------ resume
    def _resume_config(self) -> dict[str, Any] | None:
        if self._plan is None:
            return None
        _, world = self._rank_world()
        manifest = self.manifest
        return {
            "mode": "on_the_fly" if self.on_the_fly else "records",
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": world,
            "num_workers": max(1, self.num_workers),
            "shuffle_shards": self.shuffle_shards,
            "batches_per_epoch": self._plan.batches_per_epoch,
            "mixstep": self.mixstep.to_dict() if self.mixstep else None,
            "phases": list(self.phases) if self.phases is not None else None,
            "manifest_layout": manifest.layout.digest() if manifest else None,
            "skipped_shards": list(self.skipped_shards),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"next_batch": self._next_batch, "config": self._resume_config()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._next_batch = int(state_dict.get("next_batch", 0))
        self._restored = state_dict.get("config")
        if self._dataset is not None:
            self._dataset.start = self._next_batch

    def _check_resume(self) -> None:
        saved, now = self._restored, self._resume_config()
        self._restored = None
        if saved is None or now is None:
            return
        mismatches = diff_values(saved, now, "", subset=False)
        if not mismatches:
            return
        message = format_mismatches(
            f"resuming at batch {self._next_batch} under another data configuration than the "
            f"checkpoint's (expected = checkpoint, found = now); the batch sequence will differ",
            mismatches)
        if self.strict_resume:
            raise ResumeMismatchError(message + "\nSet strict_resume=False to continue anyway.")
        log.warning(message)

    # ------------------------------------------------------------------ loaders
    def val_dataloader(self) -> DataLoader | list:
        """The held-out points of ``<shards>/val`` (none: no validation, an empty list)."""
        folder = None if self.on_the_fly else validation_folder(self.shards)
        if folder is None:
            return []
        batches = validation_batches(folder, self.batch_size, self.float_dtype, self.time_dtype)
        return DataLoader(batches, batch_size=None, shuffle=False)

    def train_dataloader(self) -> PositionedDataLoader:
        self.setup("fit")
        rank, world = self._rank_world()
        plan = self._make_plan(world)
        common: dict[str, Any] = {"seed": self.seed, "rank": rank, "world_size": world,
                                  "num_workers": self.num_workers, "start": self._next_batch}
        if self.on_the_fly:
            dataset: TrajectoryBatches | NoiseBatches = NoiseBatches(
                plan, self.batch_size, self.image_shape, num_classes=self.num_classes,
                float_dtype=self.float_dtype, **common)
        else:
            self._check_streams(plan, world)
            dataset = TrajectoryBatches(
                self.shards, self._usable, self.manifest.fields, plan, self.batch_size,
                shuffle_shards=self.shuffle_shards, verify=self.verify,
                float_dtype=self.float_dtype, time_dtype=self.time_dtype, **common)
        self._plan, self._dataset = plan, dataset
        self._check_resume()
        return PositionedDataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                                    pin_memory=self.pin_memory, persistent_workers=False,
                                    worker_init_fn=ignore_sigint if self.num_workers else None)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record the position of each training batch the trainer consumes.

        (A ``LightningModule`` that also defines this hook is ignored by Lightning when a data
        module defines it: put such logic in ``on_after_batch_transfer`` instead.)
        """
        trainer = self.trainer
        training = trainer is None or trainer.training
        if training and isinstance(batch, dict) and isinstance(batch.get("batch_index"), int):
            self._next_batch = batch["batch_index"] + 1
            if self._dataset is not None:
                self._dataset.start = self._next_batch
        return batch
