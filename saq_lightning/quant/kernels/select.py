"""The ``quant_kernels`` switch: which implementation runs a quantized layer's quantizer pieces.

* ``eager``: the composed PyTorch pieces (:mod:`~saq_lightning.quant.functional`, a few dozen
  small kernels per layer and step on a GPU);
* ``triton``: the fused Triton kernels (:mod:`.fused`; one kernel per piece and direction);
  on CUDA, or on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, slow: tests only).
  Asking for it where it cannot run is an error (:class:`QuantKernelsError`), never a fallback;
* ``auto``: ``triton`` on a CUDA device when Triton is installed, ``eager`` elsewhere.

Both give the same forward values (bit for bit) and the same gradients (to summation order).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Literal

import torch

from saq_lightning.errors import UserError

QuantKernels = Literal["auto", "triton", "eager"]
KERNEL_CHOICES: tuple[str, ...] = ("auto", "triton", "eager")


class QuantKernelsError(UserError, ValueError):
    """``quant_kernels`` names no implementation, or ``triton`` where Triton cannot run."""


def check_kernels(choice: str) -> str:
    """Return ``choice`` if it is one of :data:`KERNEL_CHOICES`, else raise :class:`QuantKernelsError`."""
    if choice not in KERNEL_CHOICES:
        raise QuantKernelsError(f"quant_kernels must be one of {list(KERNEL_CHOICES)}, got {choice!r}")
    return choice


def interpreting() -> bool:
    """Whether Triton kernels defined from now on run in Triton's interpreter (``TRITON_INTERPRET``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


#: checked once: a constant for torch.compile, which traces :func:`kernel_path` in every layer's forward
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_unavailable(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (``None``: they can)."""
    if not TRITON_INSTALLED:
        return "the 'triton' package is not installed"
    if device.type == "cuda" or interpreting():
        return None
    return (f"Triton kernels run on CUDA devices (or on the CPU under TRITON_INTERPRET=1), "
            f"the student is on {device.type!r}")


def kernel_path(choice: str, device: torch.device) -> str:
    """``"triton"`` or ``"eager"``: what ``choice`` runs on ``device`` (``triton`` impossible: error)."""
    if check_kernels(choice) == "eager":
        return "eager"
    if choice == "auto":
        return "triton" if device.type == "cuda" and TRITON_INSTALLED else "eager"
    reason = triton_unavailable(device)
    if reason is not None:
        raise QuantKernelsError(f"quant_kernels='triton': {reason}; use quant_kernels='auto' or 'eager'")
    return "triton"
