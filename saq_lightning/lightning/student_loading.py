"""``load_student(checkpoint)``: a trained SA-QLoRA student as a ready-to-sample ``DiffusionModel``;
``load_sampling_model(spec, student)``: the model a sampling command names (FP, naive, export, checkpoint).

The checkpoint holds only the student's trainable state and ``checkpoint["saq"]`` (teacher spec,
quantization policy). The teacher is rebuilt from its spec (weights from their original file),
quantized with the same policy, and the trained state is loaded into that student; the result
is the teacher's ``DiffusionModel`` with the student plugged in via ``with_unet``.
"""

from __future__ import annotations

from pathlib import Path

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
from saq_lightning.metrics.students import NAIVE_PREFIX, naive_student
from saq_lightning.models import DiffusionModel, ModelSpec, build_model
from saq_lightning.quant import (
    QuantPolicy,
    load_exported,
    load_trainable_state_dict,
    quantize_model,
)


def load_student(
    checkpoint: str | Path,
    map_location: str | torch.device = "cpu",
    *,
    teacher_weights: str | None = None,
    allow_teacher_transfer: bool = False,
) -> DiffusionModel:
    """The quantized, trained student of an SA-QLoRA checkpoint (``last.ckpt`` etc.), in eval mode.

    Args:
        checkpoint: a checkpoint written by ``SAQLightningModule`` (``fit``).
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
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"student checkpoint {path} does not exist")
    ckpt = load_tensors(path)
    saq = ckpt.get("saq") if isinstance(ckpt, dict) else None
    if not saq or saq.get("format") != FORMAT or "state_dict" not in ckpt:
        raise CheckpointMismatchError(
            f"{path}: not an SA-QLoRA student checkpoint (no 'saq' entry of format {FORMAT!r}); "
            f"expected a checkpoint written by SAQLightningModule")
    check_tensor_digest(ckpt, str(path))
    spec = ModelSpec(**saq["teacher"])
    if teacher_weights is not None:
        spec.weights = teacher_weights
    policy = QuantPolicy.from_dict(saq["policy"])
    teacher = build_model(spec)
    check_teacher_fingerprint(saq, teacher_fingerprint(teacher), str(path), allow_teacher_transfer)
    student, _ = quantize_model(teacher.unet, policy, warn=False)
    try:
        load_trainable_state_dict(student, split_student_state(ckpt["state_dict"]))
    except ValueError as err:
        raise CheckpointMismatchError(f"{path}: {err}") from err
    restore_bucket_map(student, saq, str(path))
    model = teacher.with_unet(student).to(map_location)
    return model.eval()


def load_sampling_model(
    spec: ModelSpec, student: str | None = None, device: str | torch.device = "cpu", calibration_samples: int = 64,
    calibration_seed: int = 12345, teacher: DiffusionModel | None = None, calibration_method: str | None = None,
) -> DiffusionModel:
    """The model to sample (frozen, eval mode, on ``device``). ``student`` (as on the command line):

    * ``None`` / ``"fp"`` - the full-precision model of the spec;
    * a folder with ``manifest.json`` - an integer export (``saq_lightning.quant.export_student``),
      plugged into the spec's model (schedule, conditioner, autoencoder);
    * a ``.ckpt`` file - a fake-quant training checkpoint, loaded by :func:`load_student` (the
      checkpoint names its teacher);
    * ``"naive:<policy>"`` - ``saq_lightning.metrics.students.naive_student`` of the spec's model.

    ``teacher``: the FP model of ``spec`` if already built (naive and export students reuse it and
    share its frozen tensors). ``calibration_*``: how a naive student is calibrated
    (``calibration_method``: ``lp`` or ``minmax``; default the policy's).
    """
    if student in (None, "", "fp"):
        return teacher if teacher is not None else build_model(spec).to(device)
    if student.startswith(NAIVE_PREFIX):
        base = teacher if teacher is not None else build_model(spec).to(device)
        return naive_student(base, student[len(NAIVE_PREFIX):], calibration_samples, calibration_seed,
                             calibration_method)
    path = Path(student).expanduser()
    if path.is_dir():
        if not (path / "manifest.json").is_file():
            raise FileNotFoundError(f"{path} is not an integer export (no manifest.json); see quant.export_student")
        base = teacher if teacher is not None else build_model(spec)
        unet = load_exported(path, device="cpu")
        return base.with_unet(unet).to(device).eval()
    if path.is_file():
        return load_student(str(path), map_location="cpu").to(device).eval()
    raise FileNotFoundError(
        f"student {student!r} not found: give a training checkpoint (.ckpt), an export folder (with "
        f"manifest.json), 'naive:<policy>' or nothing for the FP model"
    )
