"""What may change when a run resumes from a checkpoint, and the LR schedule rebuilt when it does.

A resumed run is the checkpoint's run, continued: its model settings must be the config's, field
for field, except the two that mean "train longer / at another rate":

* ``trainer.max_steps`` (the schedule's end step; it is not a model setting), and
* ``optimizer.lr`` (the LoRA learning rate).

Lightning restores the optimizer and the LR scheduler from the checkpoint, and with them the old
end step and the old base rates (the scheduler's factor is a :class:`~.optim.LinearDecay` object
whose fields are saved). Left alone, a run resumed with a larger ``max_steps`` would train at a
rate already decayed to ``final_lr_factor`` (0 by default) and change nothing.
:func:`rebuild_lr_schedule` puts the config's end step and rate back after the restore.

Every other difference is refused (:func:`check_resume_settings`), for ``--ckpt_path last`` and
``--ckpt_path <file>`` alike: the model is built from the config (the CLI does not let the
checkpoint's hyperparameters replace it), and the checkpoint's are compared with it here.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from saq_lightning.alignment.checkpointing import PORTABLE_SPEC_FIELDS, CheckpointMismatchError
from saq_lightning.alignment.optim import LinearDecay, group_kind
from saq_lightning.alignment.settings import OptimizerSettings
from saq_lightning.files import UnreadableFileError
from saq_lightning.mismatches import MISSING, diff_values, format_mismatches

from .checkpoint_io import read_checkpoint

log = logging.getLogger(__name__)

#: model settings a resumed run may change (dotted paths into the module's hyperparameters)
RESUMABLE_CHANGES = ("optimizer.lr", "compile", "quant_kernels")  # how the student runs, not what it is
_IGNORED = ("_class_path", "_instantiator")  # _class_path: saved by older versions
#: settings whose resume rule is not this module's: the mixstep schedule's is MixStepCallback's
#: (``strict_resume``: refused, or a warning), which compares it with its own saved state
_RULED_ELSEWHERE = ("mixstep",)


class ResumeSettingsError(CheckpointMismatchError):
    """A resumed run's settings differ from its checkpoint's in a field that may not change."""


def resume_mismatches(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, checkpoint value, config value)`` of every model setting that may not change."""
    def comparable(hparams: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in dict(hparams).items() if k not in _IGNORED}
        if isinstance(out.get("teacher"), Mapping):  # weight files may move
            out["teacher"] = {k: v for k, v in out["teacher"].items() if k not in PORTABLE_SPEC_FIELDS}
        return out

    mismatches = diff_values(comparable(saved), comparable(now), "", subset=False)
    # a setting the checkpoint does not record is newer than the checkpoint's code: not a change
    return [m for m in mismatches if m[0] not in RESUMABLE_CHANGES
            and re.split(r"[.\[]", m[0])[0] not in _RULED_ELSEWHERE
            and not (isinstance(m[1], str) and m[1] == MISSING)]


def check_resume_settings(saved: Mapping[str, Any] | None, now: Mapping[str, Any], source: str) -> None:
    """Raise :class:`ResumeSettingsError` listing every model setting the config changed."""
    if not saved:
        return  # a checkpoint without hyperparameters: check_identity has checked what it can
    mismatches = resume_mismatches(saved, now)
    if mismatches:
        raise ResumeSettingsError(format_mismatches(
            f"{source}: this run's model settings differ from the checkpoint's (expected = "
            f"checkpoint, found = this config); a resumed run may change only trainer.max_steps and "
            f"model.optimizer.lr. Start a new run (another checkpoint dirpath) to change the others",
            [(f"model.{k}", e, f) for k, e, f in mismatches]))


def rebuild_lr_schedule(trainer: pl.Trainer, settings: OptimizerSettings,
                        saved_optimizer: Mapping[str, Any] | None) -> str | None:
    """After Lightning restored optimizer and scheduler: make the schedule end at this run's
    ``max_steps`` and the LoRA groups use this run's ``optimizer.lr``; returns the line it printed
    (``None``: nothing changed, the resume is exact)."""
    if not trainer.lr_scheduler_configs:
        return None
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    factors = getattr(scheduler, "lr_lambdas", None)
    if not factors or not isinstance(factors[0], LinearDecay):
        return None
    old = LinearDecay(**vars(factors[0]))
    new = LinearDecay(_total_steps(trainer.estimated_stepping_batches), settings.warmup_steps,
                      settings.final_lr_factor, settings.decay)
    old_lr = float((saved_optimizer or {}).get("lr", settings.lr))
    ratio = settings.lr / old_lr if old_lr else 1.0
    if vars(old) == vars(new) and ratio == 1.0:
        return None
    step = int(scheduler.last_epoch)
    optimizer = scheduler.optimizer
    for factor in {id(f): f for f in factors}.values():
        factor.__dict__.update(vars(new))
    for i, group in enumerate(optimizer.param_groups):
        if group_kind(str(group.get("name", ""))) == "lora":
            scheduler.base_lrs[i] *= ratio
        group["initial_lr"] = scheduler.base_lrs[i]
        group["lr"] = scheduler.base_lrs[i] * factors[i](step)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    parts = []
    if old.total != new.total:
        parts.append(f"LR schedule rebuilt to end at step {new.total} (was {old.total})")
    if ratio != 1.0:
        parts.append(f"optimizer.lr {settings.lr:g} (was {old_lr:g})")
    line = f"resuming at step {trainer.global_step}: " + "; ".join(parts or ["LR schedule rebuilt"])
    rank_zero_info(line)
    return line


def _total_steps(estimated: float) -> int:
    return int(estimated) if math.isfinite(estimated) else 10**9  # as build_optimizer


#: the file ``SlurmRequeue`` saves at a preemption's step boundary (in ``default_root_dir``)
REQUEUE_CKPT = "requeue.ckpt"


def last_candidates(checkpoint_dirs: list[Path], default_root_dir: Path) -> list[Path]:
    """What ``--ckpt_path last`` chooses from: ``requeue.ckpt`` in ``default_root_dir`` and every
    ``last*.ckpt`` in the checkpoint folders, the existing ones."""
    found = [default_root_dir / REQUEUE_CKPT]
    for folder in checkpoint_dirs:
        found += sorted(folder.glob("last*.ckpt")) if folder.is_dir() else []
    return [p for p in dict.fromkeys(found) if p.is_file()]


def _saved_step(path: Path) -> int | None:
    """The checkpoint's ``global_step``, or ``None`` (one line printed) when it cannot be read."""
    try:  # digest included: a damaged file is no resume point
        return int(read_checkpoint(path)["global_step"])
    except (CheckpointMismatchError, UnreadableFileError, KeyError, TypeError, ValueError) as err:
        log.warning("--ckpt_path last: skipping %s (%s)", path, str(err).splitlines()[0])
        return None


def newest_readable(candidates: list[Path]) -> Path | None:
    """The candidate with the highest ``global_step`` (a tie: ``requeue.ckpt``, saved for exactly
    this resume at the signal's step boundary, then the newer file); unreadable ones are skipped
    with one line each. ``None`` when there are no candidates; an error when none is readable."""
    best: tuple[tuple[int, bool, int], Path] | None = None
    for path in candidates:
        step = _saved_step(path)
        if step is None:
            continue
        key = (step, path.name == REQUEUE_CKPT, path.stat().st_mtime_ns)
        if best is None or key > best[0]:
            best = (key, path)
    if best is None and candidates:
        raise CheckpointMismatchError(
            f"--ckpt_path last: none of {', '.join(map(str, candidates))} is a readable checkpoint; "
            f"pass --ckpt_path <file> of a good one, or start a new run")
    return None if best is None else best[1]
