"""``fit`` never mixes two runs in one folder: ``last.ckpt`` always means the newest run there.

Lightning would write a fresh run's checkpoints next to an earlier run's (``last-v1.ckpt``, while
``last.ckpt`` still holds the old run), and a TensorBoard logger with a fixed ``version`` would
add a second event file to the old run's folder. :func:`check_fit_outputs` refuses to start such
a run, unless it resumes (``ckpt_path`` given: ``last``, a file, or what an automatic requeue
resolves to) or ``overwrite`` removes the old run's files first.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from saq_lightning.outputs import OutputExistsError, clear_outputs, existing


def stale_outputs(trainer: pl.Trainer) -> list[Path]:
    """Checkpoints in the explicit ``dirpath`` of every ModelCheckpoint, and fixed-version
    TensorBoard folders that already hold files."""
    found: list[Path] = []
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None)
        if dirpath and Path(dirpath).is_dir():
            found += sorted(Path(dirpath).glob("*.ckpt"))
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger) and logger._version is not None:
            found += existing([Path(logger.log_dir)])
    return found


def check_fit_outputs(trainer: pl.Trainer, ckpt_path: str | None, overwrite: bool) -> None:
    """Refuse a fresh ``fit`` whose checkpoint or log folder holds an earlier run (or remove
    those files with ``overwrite``). A resumed run (``ckpt_path`` not ``None``) is never refused."""
    if ckpt_path is not None or not trainer.is_global_zero:
        return
    found = stale_outputs(trainer)
    if not found:
        return
    if not overwrite:
        shown = ", ".join(str(p) for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise OutputExistsError(
            f"fit: {shown} hold(s) an earlier run; a new run there would leave last.ckpt pointing "
            f"at the old one. Resume it with --ckpt_path last, give this run another checkpoint "
            f"dirpath / logger version, or pass --overwrite true to delete the old run's files")
    clear_outputs(found)
