"""``fit`` never mixes two runs in one folder: ``last.ckpt`` always means the newest run there.

Lightning would write a fresh run's checkpoints next to an earlier run's (``last-v1.ckpt``, while
``last.ckpt`` still holds the old run), and a TensorBoard logger with a fixed ``version`` would
add a second event file to the old run's folder. :func:`check_fit_outputs` refuses to start such
a run, unless it resumes (``ckpt_path`` given: ``last``, a file, or what an automatic requeue
resolves to) or ``overwrite`` is given.

``--overwrite`` loses nothing before the new run has proven itself: the old run's files are moved
aside (:class:`SetAside`, hidden names beside them, same filesystem) and deleted only once the new
run has written its first checkpoint; a new run that fails before that gets them back.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from saq_lightning.outputs import OutputExistsError, existing

log = logging.getLogger(__name__)


def checkpoint_dirs(trainer: pl.Trainer) -> list[Path]:
    """The explicit ``dirpath`` of every ModelCheckpoint."""
    return [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks
            if isinstance(cb, ModelCheckpoint) and getattr(cb, "dirpath", None)]


def stale_outputs(trainer: pl.Trainer) -> list[Path]:
    """Checkpoints in the explicit ``dirpath`` of every ModelCheckpoint, and fixed-version
    TensorBoard folders that already hold files."""
    found: list[Path] = []
    for dirpath in checkpoint_dirs(trainer):
        if dirpath.is_dir():
            found += sorted(dirpath.glob("*.ckpt"))
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and logger._version is not None:
            found += existing([Path(logger.log_dir)])
    return found


class SetAside:
    """An earlier run's files moved to hidden names beside them until the new run has written its
    first checkpoint (:meth:`discard`) or has failed before it (:meth:`restore`)."""

    def __init__(self, paths: list[Path]) -> None:
        tag = uuid.uuid4().hex[:8]
        self.moves: list[tuple[Path, Path]] = []
        for path in paths:
            aside = path.with_name(f".{path.name}.overwritten-{tag}")
            os.replace(path, aside)
            self.moves.append((path, aside))

    @property
    def pending(self) -> bool:
        return bool(self.moves)

    def discard(self, *_: object) -> None:
        """The new run has its first checkpoint: delete the old files."""
        for _path, aside in self.moves:
            shutil.rmtree(aside) if aside.is_dir() else aside.unlink(missing_ok=True)
        self.moves = []

    def restore(self) -> None:
        """The new run failed before its first checkpoint: put the old files back (what the failed
        run wrote at the same names, logs only, is removed)."""
        for path, aside in self.moves:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            os.replace(aside, path)
        if self.moves:
            log.warning("fit failed before its first checkpoint: the earlier run's files are restored (%s)",
                        ", ".join(str(p) for p, _ in self.moves))
        self.moves = []


def check_fit_outputs(trainer: pl.Trainer, ckpt_path: str | None, overwrite: bool) -> SetAside | None:
    """Refuse a fresh ``fit`` whose checkpoint or log folder holds an earlier run, or (with
    ``overwrite``) move those files aside and return them. A resumed run (``ckpt_path`` not
    ``None``) is never refused."""
    if ckpt_path is not None or not trainer.is_global_zero:
        return None
    found = stale_outputs(trainer)
    if not found:
        return None
    if not overwrite:
        shown = ", ".join(str(p) for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise OutputExistsError(
            f"fit: {shown} hold(s) an earlier run; a new run there would leave last.ckpt pointing "
            f"at the old one. Resume it with --ckpt_path last, give this run another checkpoint "
            f"dirpath / logger version, or pass --overwrite true to delete the old run's files")
    return SetAside(found)
