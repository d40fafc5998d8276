"""How ``fit`` writes and reads its checkpoints: atomically, with a digest, without running pickles.

Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file
lives in the system's temporary folder; when that is another filesystem than the checkpoint folder
the commit is a copy that first truncates the target, so a full disk destroys the good
``last.ckpt``. :class:`AtomicCheckpointIO` writes to a hidden temporary file *beside* the target
(:func:`saq_lightning.files.atomic_path`) and renames it over the target: a failed save leaves the
previous file whole and no temporary file behind.

Every checkpoint it writes carries a digest of its tensors (:func:`.checkpointing.tensor_digest`),
checked when it is read back. Reading is always ``torch.load(weights_only=True)``: a checkpoint
cannot run code. A file that is not a Lightning training checkpoint (e.g. the ``student.ckpt`` of
``ptq``, or a damaged file) is refused in one line naming it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from saq_lightning.alignment.checkpointing import (
    CheckpointMismatchError,
    add_tensor_digest,
    check_tensor_digest,
)
from saq_lightning.files import atomic_path, load_tensors


class UnreadableCheckpointError(CheckpointMismatchError):
    """A checkpoint file cannot be read as a training checkpoint (damaged, empty, not one)."""


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with one-line errors naming ``path``, the tensor
    digest checked (a pickle that would run code is refused: :class:`~saq_lightning.files.UnsafeFileError`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such checkpoint", str(path))
    checkpoint = load_tensors(path, map_location=map_location)  # one line naming an unreadable/unsafe file
    if not isinstance(checkpoint, dict):
        raise UnreadableCheckpointError(f"{path}: not a checkpoint (holds a {type(checkpoint).__name__})")
    check_tensor_digest(checkpoint, str(path))
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that saves atomically beside the target and reads ``weights_only``.

    ``after_save`` (if set) is called with the path after each successful save (``fit
    --overwrite`` deletes the earlier run's files once the new run's first checkpoint exists).
    """

    def __init__(self) -> None:
        super().__init__()
        self.after_save: Callable[[Path], None] | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        add_tensor_digest(checkpoint)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        if self.after_save is not None:
            self.after_save(path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint = read_checkpoint(path, map_location if map_location is not None else "cpu")
        if "pytorch-lightning_version" not in checkpoint:
            raise UnreadableCheckpointError(
                f"{path}: not a Lightning training checkpoint (no 'pytorch-lightning_version'; a ptq "
                f"student.ckpt?); --ckpt_path resumes a fit checkpoint (last.ckpt), start a run from a "
                f"student with --model.init_from instead")
        return checkpoint
