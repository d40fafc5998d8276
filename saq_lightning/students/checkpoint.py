"""``load_student(checkpoint)``: a trained student (SA-QLoRA ``fit`` or SA-PTQ ``ptq`` checkpoint) as
a ready-to-sample ``DiffusionModel``.

The checkpoint holds only the student's trainable state and ``checkpoint["saq"]`` (teacher spec,
quantization policy). The teacher is rebuilt from its spec (weights from their original file),
quantized with the same policy, and the trained state is loaded into that student; the result
is the teacher's ``DiffusionModel`` with the student plugged in via ``with_unet``.
:func:`student_from_contents` does the same from contents already read (``StudentRef`` reads a
checkpoint once and hands its contents to every use).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from saq_lightning.alignment.checkpointing import (
    FORMAT,
    CheckpointMismatchError,
    check_teacher_fingerprint,
    check_tensor_digest,
    restore_bucket_map,
    split_student_state,
    teacher_fingerprint,
)
from saq_lightning.files import load_tensors
from saq_lightning.models import DiffusionModel, ModelSpec, build_model
from saq_lightning.quant import QuantPolicy, load_trainable_state_dict, quantize_model


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The contents of a student checkpoint (``weights_only``), checked to be one: the one read of
    the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"student checkpoint {path} does not exist")
    ckpt = load_tensors(path)
    saq = ckpt.get("saq") if isinstance(ckpt, dict) else None
    if not saq or saq.get("format") != FORMAT or "state_dict" not in ckpt:
        raise CheckpointMismatchError(
            f"{path}: not an SA-QLoRA student checkpoint (no 'saq' entry of format {FORMAT!r}); "
            f"expected a checkpoint written by SAQLightningModule")
    return ckpt


def teacher_spec(contents: Mapping[str, Any], teacher_weights: str | None = None) -> ModelSpec:
    """The spec of the teacher a checkpoint's student was trained against (``teacher_weights``: the
    weights file moved)."""
    spec = ModelSpec(**contents["saq"]["teacher"])
    if teacher_weights is not None:
        spec.weights = teacher_weights
    return spec


def student_from_contents(
    contents: Mapping[str, Any], path: str | Path, *, teacher_weights: str | None = None,
    allow_teacher_transfer: bool = False,
) -> DiffusionModel:
    """The student of checkpoint contents read by :func:`read_checkpoint` (on the CPU, eval mode);
    ``path`` names the file in errors."""
    check_tensor_digest(contents, str(path))
    saq = contents["saq"]
    teacher = build_model(teacher_spec(contents, teacher_weights))
    check_teacher_fingerprint(saq, teacher_fingerprint(teacher), str(path), allow_teacher_transfer)
    student, _ = quantize_model(teacher.unet, QuantPolicy.from_dict(saq["policy"]), warn=False)
    try:
        load_trainable_state_dict(student, split_student_state(contents["state_dict"]))
    except ValueError as err:
        raise CheckpointMismatchError(f"{path}: {err}") from err
    restore_bucket_map(student, saq, str(path))
    return teacher.with_unet(student).eval()


def load_student(
    checkpoint: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    teacher_weights: str | None = None,
    allow_teacher_transfer: bool = False,
) -> DiffusionModel:
    """The quantized, trained student of a student checkpoint (``last.ckpt``, ``student.ckpt``), in
    eval mode.

    Args:
        checkpoint: a checkpoint written by ``SAQLightningModule`` (``fit``) or ``ptq``.
        map_location: device for the model.
        teacher_weights: another location of the teacher's weights than the one recorded in the
            checkpoint (the file moved).
        allow_teacher_transfer: load the student onto teacher weights other than those it was
            trained against (their fingerprints differ), deliberately.

    Raises:
        FileNotFoundError: the checkpoint (or the teacher's weights) does not exist.
        CheckpointMismatchError: the file is not an SA-QLoRA student checkpoint, or the teacher's
            weights are not those the student was trained against.
    """
    model = student_from_contents(read_checkpoint(checkpoint), Path(checkpoint).expanduser(),
                                  teacher_weights=teacher_weights, allow_teacher_transfer=allow_teacher_transfer)
    return model.to(map_location).eval()
