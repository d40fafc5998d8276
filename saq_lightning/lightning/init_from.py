"""``model.init_from``: start SA-QLoRA from another student checkpoint (e.g. ``ptq``'s output).

The checkpoint must belong to the same teacher and quantization policy (checked field by field,
as a resume is); its trainable state (AdaRound decisions, quantizer tables, LoRA) replaces the
calibration a fresh run would do. Unlike ``--ckpt_path`` it starts a new run: step 0, a new
optimizer, the config's schedule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from saq_lightning.quant import load_trainable_state_dict

from .checkpointing import CheckpointMismatchError, check_identity, split_student_state


def load_init_from(student: nn.Module, path: str | Path, identity_now: dict[str, Any]) -> None:
    """Load the student state of ``path`` into ``student``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointMismatchError: another teacher or policy, or not a student checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"model.init_from: student checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointMismatchError(f"model.init_from: {path} is not a student checkpoint (no state_dict)")
    check_identity(ckpt.get("saq"), identity_now, f"model.init_from: {path}")
    try:
        load_trainable_state_dict(student, split_student_state(ckpt["state_dict"]))
    except ValueError as err:
        raise CheckpointMismatchError(f"model.init_from: {path}: {err}") from err
