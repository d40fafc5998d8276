"""``sample --runtime fake|int|weight_only``: which arithmetic a quantized student runs with.

* ``fake`` (default): the student as loaded (fake-quant float; an export is dequantized);
* ``int``: the low-bit runtime (:func:`saq_lightning.quant.runtime.load_runtime`), int8 integer
  arithmetic on packed weights;
* ``weight_only``: packed weights dequantized per layer, float activations (W4A16 / W8A16).

An export folder is loaded by the runtime directly (its files read once); a training checkpoint or
a ``naive:`` student is exported to a temporary folder first (the same integer weights an export
would hold).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

from saq_lightning.errors import UserError
from saq_lightning.quant import QuantizedUNet, export_student

#: ``--runtime`` value -> ``load_runtime(arithmetic=...)`` (``None``: the fake-quant student itself)
RUNTIMES = {"fake": None, "int": "int8", "weight_only": "weight_only"}

log = logging.getLogger(__name__)


class RuntimeChoiceError(UserError, ValueError):
    """An unknown ``--runtime``, or an integer runtime for a student that is not quantized."""


def check_runtime_name(runtime: str) -> str | None:
    """The runtime's ``arithmetic`` (``None`` for ``fake``); an unknown name is an error."""
    if runtime not in RUNTIMES:
        raise RuntimeChoiceError(f"--runtime {runtime!r}: expected one of {sorted(RUNTIMES)}")
    return RUNTIMES[runtime]


def export_runtime(folder: str | Path, arithmetic: str, device: torch.device | str) -> QuantizedUNet:
    """The runtime UNet of an export folder (its report logged: one summary line, one line per kind
    of fallback with its layer count; ``unet.runtime_report`` has every layer)."""
    from saq_lightning.quant.runtime import load_runtime

    unet = load_runtime(folder, arithmetic=arithmetic, device=device)
    log.info("%s", unet.runtime_report.summary())
    for line in fallback_lines(unet.runtime_report.fallbacks()):
        log.warning("%s", line)
    return unet


def fallback_lines(rows: list) -> list[str]:
    """One line per fallback arithmetic: how many layers, the first few names, one note."""
    by_kind: dict[str, list] = {}
    for row in rows:
        by_kind.setdefault(row.arithmetic, []).append(row)
    lines = []
    for arithmetic, group in by_kind.items():
        names = ", ".join(r.name for r in group[:3]) + (f" and {len(group) - 3} more" if len(group) > 3 else "")
        note = next((r.note for r in group if r.note), "")
        lines.append(f"runtime fallback: {len(group)} layer(s) run {arithmetic} ({names})" + (f": {note}" if note else ""))
    return lines


def student_runtime(unet: nn.Module, arithmetic: str, device: torch.device | str, label: str) -> QuantizedUNet:
    """The runtime UNet of a loaded fake-quant student, through a temporary export (``label`` names
    the student in errors)."""
    if not isinstance(unet, QuantizedUNet):
        raise TypeError(f"runtime {arithmetic}: student {label!r} did not load as a quantized UNet")
    with tempfile.TemporaryDirectory(prefix="saq-runtime-") as tmp:
        return export_runtime(export_student(unet, Path(tmp) / "export"), arithmetic, device)
