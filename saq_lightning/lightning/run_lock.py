"""One ``fit`` writes to a checkpoint folder at a time.

Two runs started at once on one folder would both pass the "earlier run" check of
:mod:`.run_outputs` and then replace each other's ``last.ckpt``. The first run holds an exclusive
``flock`` on the folder itself (an open directory descriptor, so no lock file joins the user's
checkpoints) for as long as it runs; a second run is refused in one line. The kernel releases the
lock whenever the process ends, however it ends (exception, signal, ``kill -9``): a lock is never
left stale.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from saq_lightning.errors import UserError


class RunFolderBusyError(UserError, RuntimeError):
    """Another process is writing checkpoints to the folder."""


@contextmanager
def folder_lock(folder: str | os.PathLike, command: str = "fit") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the block runs; raise
    :class:`RunFolderBusyError` at once when another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderBusyError(
                f"{command}: another run is writing to {folder} now (it holds the folder's lock); wait "
                f"for it to end, or give this run another checkpoint dirpath") from None
        yield folder
    finally:
        os.close(fd)  # releases the lock


@contextmanager
def folder_locks(folders: Sequence[str | os.PathLike], command: str = "fit") -> Iterator[None]:
    """:func:`folder_lock` on each distinct folder."""
    with ExitStack() as stack:
        for folder in dict.fromkeys(Path(f).resolve() for f in folders):
            stack.enter_context(folder_lock(folder, command))
        yield
