"""What an SA-QLoRA checkpoint holds, and the checks that it fits the run that loads it.

A checkpoint's ``state_dict`` holds only the student's trainable state (LoRA, quantizer
parameters and their state buffers, keys ``student.*``): the frozen teacher weights come from
their original files on every start. ``checkpoint["saq"]`` records what the state belongs to:
the teacher spec and the full quantization policy, plus a fingerprint of the teacher's weights
(``teacher_fingerprint``: a student is a correction *of those weights*; on another weight file of
the same architecture it is refused unless the transfer is deliberate) and the student's bucket
map.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from saq_lightning.errors import UserError
from saq_lightning.mismatches import diff_values, format_mismatches
from saq_lightning.quant import trainable_state_dict
from saq_lightning.quant.bucket_map import BucketMap

FORMAT = "saq_lightning/sa-qlora-student"
VERSION = 1
STUDENT_PREFIX = "student."
#: spec fields that may legitimately differ between runs of one model (files move, sampling
#: defaults are informational)
PORTABLE_SPEC_FIELDS = ("weights", "weights_source", "tokenizer", "sampling")


class CheckpointMismatchError(UserError, ValueError):
    """A checkpoint belongs to another teacher architecture or quantization policy."""


def student_state_dict(student: nn.Module) -> dict[str, Tensor]:
    """The student's trainable state with the LightningModule's key prefix."""
    return {STUDENT_PREFIX + k: v for k, v in trainable_state_dict(student).items()}


def split_student_state(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ``student.*`` entries of a checkpoint's state dict, prefix removed."""
    return {k[len(STUDENT_PREFIX):]: v for k, v in state_dict.items() if k.startswith(STUDENT_PREFIX)}


def identity(teacher_spec: Mapping[str, Any], policy: Mapping[str, Any]) -> dict[str, Any]:
    """``checkpoint["saq"]``: the format, the teacher spec and the quantization policy."""
    return {"format": FORMAT, "version": VERSION, "teacher": dict(teacher_spec), "policy": dict(policy)}


def teacher_fingerprint(teacher: nn.Module) -> str:
    """SHA-256 (first 32 hex digits) over the names, shapes, dtypes and bytes of every tensor of
    ``teacher``'s state dict, in name order: equal exactly when the weights are bit-identical."""
    h = hashlib.sha256()
    for name, t in sorted(teacher.state_dict().items()):
        t = t.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:32]


def check_teacher_fingerprint(saved: Mapping[str, Any], now: str, source: str,
                              allow_transfer: bool = False) -> None:
    """Refuse a student trained against other teacher weights (a checkpoint without a fingerprint,
    written before it was recorded, passes)."""
    recorded = saved.get("teacher_fingerprint")
    if recorded is None or recorded == now or allow_transfer:
        return
    raise CheckpointMismatchError(
        f"{source}: the student was trained against teacher weights with fingerprint {recorded}, "
        f"the teacher loaded now (weights {saved.get('teacher', {}).get('weights')!r} in the "
        f"checkpoint's spec; this run's may differ) has fingerprint {now}: the LoRA and quantizer "
        f"state corrects other weights. To transfer it deliberately pass allow_teacher_transfer="
        f"True (fit: --model.allow_teacher_transfer true; load_student(..., "
        f"allow_teacher_transfer=True))")


def _comparable(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in PORTABLE_SPEC_FIELDS}


def check_identity(saved: Mapping[str, Any] | None, now: Mapping[str, Any], source: str) -> None:
    """Raise :class:`CheckpointMismatchError` if ``saved`` is not an SA-QLoRA checkpoint of the same
    teacher architecture and policy (the fields that differ are listed)."""
    if not saved or saved.get("format") != FORMAT:
        raise CheckpointMismatchError(
            f"{source}: not an SA-QLoRA student checkpoint (no 'saq' entry of format {FORMAT!r}); "
            f"was it written by another LightningModule?")
    if int(saved.get("version", -1)) != VERSION:
        raise CheckpointMismatchError(f"{source}: checkpoint version {saved.get('version')!r}, "
                                      f"this code reads version {VERSION}")
    mismatches = diff_values(_comparable(saved["teacher"]), _comparable(now["teacher"]), "teacher",
                             subset=False)
    mismatches += diff_values(saved["policy"], now["policy"], "policy", subset=False)
    if mismatches:
        raise CheckpointMismatchError(format_mismatches(
            f"{source}: the checkpoint's student was built for another teacher or quantization "
            f"policy (expected = checkpoint, found = this run)", mismatches))


def restore_bucket_map(student: Any, saved: Mapping[str, Any], source: str) -> None:
    """Give ``student`` the bucket map recorded in ``checkpoint["saq"]`` (none recorded: an older
    checkpoint, the grid-free value rule stays). A run whose own grids give another map is refused:
    the trained activation buckets would change meaning."""
    d = saved.get("bucket_map")
    if not d or not d.get("grids"):
        return
    loaded = BucketMap.from_dict(d)
    if student.bucket_map.trained:
        check_same_buckets(loaded, student.bucket_map, source, "use the same phases and spacing to resume")
    student.set_bucket_map(loaded)


def check_same_buckets(saved: BucketMap, now: BucketMap, source: str, advice: str) -> None:
    """Refuse ``now`` when its grids give other step-to-bucket tables than ``saved`` (the grids the
    student's activation step sizes were calibrated and trained on)."""
    if not saved.same_as(now):
        raise CheckpointMismatchError(
            f"{source}: the student was calibrated and trained on the grids "
            f"{[(g.spacing, g.steps) for g in saved.grids]}, whose timestep-bucket tables differ "
            f"from this run's {[(g.spacing, g.steps) for g in now.grids]}; {advice}")


#: ``checkpoint[DIGEST_KEY]``: SHA-256 over every tensor of the checkpoint (its key path, shape, dtype
#: and bytes), so that a flipped bit or a tensor swapped in from another run is found on load
DIGEST_KEY = "saq_tensor_digest"


class CheckpointDigestError(CheckpointMismatchError):
    """A checkpoint's tensors are not those it was saved with (bit rot, tampering, a partial copy)."""


def _tensors(value: Any, path: str) -> Iterator[tuple[str, Tensor]]:
    """``(key path, tensor)`` of every tensor inside nested dicts/lists/tuples, in a fixed order."""
    if isinstance(value, Tensor):
        yield path, value
    elif isinstance(value, Mapping):
        for key in sorted(value, key=lambda k: (type(k).__name__, str(k))):
            if path == "" and key == DIGEST_KEY:
                continue
            yield from _tensors(value[key], f"{path}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}/{i}")


def tensor_digest(checkpoint: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over the key path, shape, dtype and bytes of every tensor in ``checkpoint``."""
    h = hashlib.sha256()
    for name, t in _tensors(checkpoint, ""):
        t = t.detach()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def add_tensor_digest(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` with :data:`DIGEST_KEY` set (in place)."""
    checkpoint[DIGEST_KEY] = tensor_digest(checkpoint)
    return checkpoint


def check_tensor_digest(checkpoint: Mapping[str, Any], source: str) -> None:
    """Raise :class:`CheckpointDigestError` when ``checkpoint``'s tensors do not match its recorded
    digest (a checkpoint written before digests were recorded passes)."""
    recorded = checkpoint.get(DIGEST_KEY)
    if recorded is None:
        return
    if tensor_digest(checkpoint) != recorded:
        raise CheckpointDigestError(
            f"{source}: the checkpoint's tensors do not match the digest recorded when it was saved "
            f"(the file was changed or damaged since); use another checkpoint")
