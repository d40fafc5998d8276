"""``sample --runtime fake|int|weight_only``: which arithmetic a quantized student runs with.

* ``fake`` (default): the student as loaded (fake-quant float; an export is dequantized);
* ``int``: the low-bit runtime (:func:`saq_lightning.quant.runtime.load_runtime`), int8 integer
  arithmetic on packed weights;
* ``weight_only``: packed weights dequantized per layer, float activations (W4A16 / W8A16).

An export folder is loaded by the runtime directly; a training checkpoint or a ``naive:`` student
is exported to a temporary folder first (the same integer weights an export would hold).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from saq_lightning.models.diffusion_model import DiffusionModel

RUNTIMES = {"fake": None, "int": "int8", "weight_only": "weight_only"}

log = logging.getLogger(__name__)


def check_runtime(runtime: str, student: str | None) -> None:
    if runtime not in RUNTIMES:
        raise ValueError(f"--runtime {runtime!r}: expected one of {sorted(RUNTIMES)}")
    if runtime != "fake" and student in (None, "", "fp"):
        raise ValueError(f"--runtime {runtime} needs a quantized --student (an export, a checkpoint or naive:<policy>)")


def with_runtime(net: DiffusionModel, runtime: str, student: str | None, device: torch.device) -> DiffusionModel:
    """``net`` (a student loaded by ``load_sampling_model``, lightning/student_loading.py) with its
    UNet swapped for the runtime."""
    check_runtime(runtime, student)
    arithmetic = RUNTIMES[runtime]
    if arithmetic is None:
        return net
    from saq_lightning.quant import QuantizedUNet, export_student
    from saq_lightning.quant.runtime import load_runtime

    path = Path(str(student)).expanduser()
    if path.is_dir():
        unet = load_runtime(path, arithmetic=arithmetic, device=device)
    else:
        if not isinstance(net.unet, QuantizedUNet):
            raise TypeError(f"--runtime {runtime}: student {student!r} did not load as a quantized UNet")
        with tempfile.TemporaryDirectory(prefix="saq-runtime-") as tmp:
            folder = export_student(net.unet, Path(tmp) / "export")
            unet = load_runtime(folder, arithmetic=arithmetic, device=device)
    log.info("%s", unet.runtime_report.summary())
    for row in unet.runtime_report.fallbacks():
        log.warning("runtime fallback: %s %s runs %s (%s)", row.name, row.bits, row.arithmetic, row.note)
    return net.with_unet(unet).to(device).eval()
