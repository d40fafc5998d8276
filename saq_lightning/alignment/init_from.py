"""``model.init_from``: start SA-QLoRA from another student checkpoint (e.g. ``ptq``'s output).

The checkpoint must belong to the same teacher and quantization policy (checked field by field,
as a resume is); its trainable state (AdaRound decisions, quantizer tables, LoRA) replaces the
calibration a fresh run would do. Unlike ``--ckpt_path`` it starts a new run: step 0, a new
optimizer, the config's schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from saq_lightning.files import load_tensors
from saq_lightning.quant import load_trainable_state_dict
from saq_lightning.quant.bucket_map import BucketMap

from .checkpointing import (
    CheckpointMismatchError,
    check_identity,
    check_same_buckets,
    check_teacher_fingerprint,
    check_tensor_digest,
    restore_bucket_map,
    split_student_state,
)


def load_init_from(student: nn.Module, path: str | Path, identity_now: dict[str, Any],
                   allow_teacher_transfer: bool = False) -> None:
    """Load the student state and bucket map of ``path`` into ``student``.

    ``identity_now``: this run's ``checkpoint["saq"]`` (teacher spec, policy, teacher fingerprint).

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: another teacher (architecture or weights) or policy, or not a
            student checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: student checkpoint {path} does not exist")
    ckpt = load_tensors(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"model.init_from: {path} is not a student checkpoint (no state_dict)")
    source = f"model.init_from: {path}"
    check_tensor_digest(ckpt, source)
    check_identity(ckpt.get("saq"), identity_now, source)
    check_teacher_fingerprint(ckpt["saq"], identity_now["teacher_fingerprint"], source,
                              allow_teacher_transfer)
    restore_bucket_map(student, ckpt["saq"], source)
    try:
        load_trainable_state_dict(student, split_student_state(ckpt["state_dict"]))
    except ValueError as err:
        raise CheckpointMismatchError(f"model.init_from: {path}: {err}") from err


def check_init_bucket_map(loaded: BucketMap, now: BucketMap, path: str | Path) -> None:
    """Refuse phases whose grids give other timestep buckets than the ``init_from`` student's: its
    activation step sizes were calibrated (or reconstructed) for the buckets of its own grids."""
    if loaded.trained:
        check_same_buckets(loaded, now, f"model.init_from: {path}",
                           "use the phases and spacing of the run that wrote it (e.g. the ptq config's)")
