"""``StudentRef``: what ``--student`` names, parsed once: the FP model, a naive post-training student
(``naive:<policy>``), an integer export folder or a student checkpoint (``fit``/``ptq``).

Every command that takes ``--student`` (``sample``, ``diagnose``, ``export``) parses the string here
and asks the reference for what it needs: the model (:meth:`StudentRef.load`, with the arithmetic of
``--runtime``), what identifies its outputs (:meth:`StudentRef.identity`) and the sampler it was
trained for (:meth:`StudentRef.trained_sampler`). A checkpoint is read once and its contents serve
all three; an export is read once, by the loader of the arithmetic asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch

from saq_lightning.errors import UserError
from saq_lightning.models import DiffusionModel, ModelSpec, build_model

from .checkpoint import read_checkpoint, student_from_contents, teacher_spec
from .naive import naive_student
from .runtime import RuntimeChoiceError, check_runtime_name, export_runtime, student_runtime
from .trained_sampler import trained_sampler_of

NAIVE_PREFIX = "naive:"
Kind = Literal["fp", "naive", "export", "checkpoint"]


class StudentRefError(UserError, ValueError):
    """A ``--student`` value that names no usable student (``naive:`` without a policy) or one of a
    kind the command cannot use (``export`` of the FP model or of an export): a user error."""


@dataclass(frozen=True)
class NaiveCalibration:
    """How a ``naive:<policy>`` student is calibrated: ``samples`` FP trajectories from ``seed``,
    ranges by ``method`` (``lp`` or ``minmax``; ``None``: the policy's)."""

    samples: int = 64
    seed: int = 12345
    method: str | None = None


@dataclass(frozen=True)
class StudentRef:
    """One ``--student`` value. Build it with :meth:`parse`."""

    kind: Kind
    text: str  # as given ("fp" for none)
    policy: str | None = None  # naive: the policy preset
    path: Path | None = None  # export folder or checkpoint file

    @classmethod
    def parse(cls, student: str | None) -> StudentRef:
        """``None``/``""``/``"fp"``, ``naive:<policy>``, a folder with ``manifest.json`` or a
        checkpoint file; anything else is a one-line error naming what was expected."""
        if student in (None, "", "fp"):
            return cls("fp", "fp")
        text = str(student)
        if text.startswith(NAIVE_PREFIX):
            policy = text[len(NAIVE_PREFIX):]
            if not policy:
                raise StudentRefError(f"--student {text!r}: naive:<policy> needs a policy (e.g. naive:w4a4)")
            return cls("naive", text, policy=policy)
        path = Path(text).expanduser()
        if path.is_dir():
            if not (path / "manifest.json").is_file():
                raise FileNotFoundError(
                    f"{path} is not an integer export (no manifest.json); write one with "
                    f"`python -m saq_lightning export`")
            return cls("export", text, path=path)
        if path.is_file():
            return cls("checkpoint", text, path=path)
        raise FileNotFoundError(
            f"student {text!r} not found: give a training checkpoint (.ckpt), an export folder (with "
            f"manifest.json), 'naive:<policy>' or nothing for the FP model")

    @property
    def quantized(self) -> bool:
        return self.kind != "fp"

    @cached_property
    def contents(self) -> dict[str, Any]:
        """A checkpoint's contents, read on first use and kept: the one read of the file."""
        if self.kind != "checkpoint":
            raise TypeError(f"--student {self.text!r} is a {self.kind} student, not a checkpoint")
        return read_checkpoint(self.path)

    def check_runtime(self, runtime: str) -> str | None:
        """The arithmetic of ``runtime`` for this student (``None``: fake-quant as loaded)."""
        arithmetic = check_runtime_name(runtime)
        if arithmetic is not None and not self.quantized:
            raise RuntimeChoiceError(f"--runtime {runtime} needs a quantized --student (an export, a checkpoint or "
                             f"naive:<policy>)")
        return arithmetic

    def model_spec(self, model: ModelSpec) -> ModelSpec:
        """The spec of the FP model under this student: a checkpoint names its teacher, every other
        student is of ``model``."""
        return teacher_spec(self.contents) if self.kind == "checkpoint" else model

    def load(
        self, model: ModelSpec, device: str | torch.device = "cpu", *, runtime: str = "fake",
        teacher: DiffusionModel | None = None, calibration: NaiveCalibration | None = None,
    ) -> DiffusionModel:
        """The model to sample (frozen, eval mode, on ``device``).

        ``model``: the spec of the FP model (a checkpoint names its own teacher and ignores it);
        ``teacher``: that FP model if already built (naive and export students reuse it and share
        its frozen tensors); ``runtime``: ``fake``, ``int`` or ``weight_only`` (``students/runtime.py``);
        ``calibration``: how a naive student is calibrated (default :class:`NaiveCalibration`).
        """
        arithmetic = self.check_runtime(runtime)
        if self.kind == "checkpoint":
            net = student_from_contents(self.contents, self.path)
            if arithmetic is not None:
                net = net.with_unet(student_runtime(net.unet, arithmetic, device, self.text))
            return net.to(device).eval()
        base = teacher if teacher is not None else build_model(model).to(device)
        if self.kind == "fp":
            return base
        if self.kind == "naive":
            calibration = calibration or NaiveCalibration()
            net = naive_student(base, self.policy, calibration.samples, calibration.seed, calibration.method)
            if arithmetic is None:
                return net
            return net.with_unet(student_runtime(net.unet, arithmetic, device, self.text)).to(device).eval()
        if arithmetic is None:
            from saq_lightning.quant import load_exported

            return base.with_unet(load_exported(self.path, device="cpu")).to(device).eval()
        return base.with_unet(export_runtime(self.path, arithmetic, device)).to(device).eval()

    def identity(self) -> dict[str, Any]:
        """What identifies this student's outputs (kind; policy; path, size and modification time of
        its files), recorded by ``sample`` so that a changed student is not mixed into old samples."""
        if self.kind == "fp":
            return {"kind": "fp"}
        if self.kind == "naive":
            return {"kind": "naive", "policy": self.policy}
        path = self.path
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        stamp = [[str(p.relative_to(path) if path.is_dir() else p.name), p.stat().st_size, p.stat().st_mtime_ns]
                 for p in files if p.is_file()]
        return {"kind": self.kind, "path": str(path.resolve()), "files": stamp}

    def trained_sampler(self) -> dict[str, Any]:
        """The sampler a checkpoint's student was trained for (``students/trained_sampler.py``);
        ``{}`` for the FP model, a naive student or an export, which record no training."""
        return trained_sampler_of(self.contents) if self.kind == "checkpoint" else {}


def load_sampling_model(
    spec: ModelSpec, student: str | None = None, device: str | torch.device = "cpu", calibration_samples: int = 64,
    calibration_seed: int = 12345, teacher: DiffusionModel | None = None, calibration_method: str | None = None,
) -> DiffusionModel:
    """``StudentRef.parse(student).load(spec, device, ...)`` (fake-quant arithmetic), for callers that
    hold the string only."""
    return StudentRef.parse(student).load(
        spec, device, teacher=teacher,
        calibration=NaiveCalibration(calibration_samples, calibration_seed, calibration_method))
