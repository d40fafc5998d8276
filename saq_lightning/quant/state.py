"""Student state helpers: quantization on/off switches and trainable-only state dicts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .attention import QuantAttnProcessor
from .layers import QuantLayer
from .quantizers import AffineQuantizer
from .rounding import attach_roundings_for_state

if TYPE_CHECKING:  # pragma: no cover
    from .model import QuantizedUNet

#: quantizer buffers that belong in a trainable checkpoint (initialised flags, bit spec, ...)
_QUANT_BUFFERS = ("initialised", "spec", "calibrated")


class set_quant_state:
    """Switch weight / activation quantization of all layers (``None`` = leave as is).

    Applies immediately; used as a context manager it restores the previous state on exit::

        set_quant_state(student, act=False)            # FP activations from now on
        with set_quant_state(student, weight=False):   # FP weights inside the block only
            ...
    """

    def __init__(self, student: nn.Module, weight: bool | None = None, act: bool | None = None) -> None:
        self._saved: list[tuple[nn.Module, str, bool]] = []
        for m in student.modules():
            if isinstance(m, QuantLayer):
                if weight is not None:
                    self._saved.append((m, "quant_weight", m.quant_weight))
                    m.quant_weight = weight
                if act is not None:
                    self._saved.append((m, "quant_act", m.quant_act))
                    m.quant_act = act
            elif isinstance(m, QuantAttnProcessor) and act is not None:
                self._saved.append((m, "quant_act", m.quant_act))
                m.quant_act = act

    def __enter__(self) -> set_quant_state:  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        for m, attr, value in reversed(self._saved):
            setattr(m, attr, value)


def trainable_state_dict(student: QuantizedUNet | nn.Module) -> dict[str, Tensor]:
    """Only what training changes: trainable parameters plus quantizer state buffers.

    Small (LoRA + quantizer tables), keys relative to ``student``; the frozen teacher weights it
    shares are not included.
    """
    out: dict[str, Tensor] = {}
    for name, p in student.named_parameters():
        if p.requires_grad:
            out[name] = p.detach()
    for mname, m in student.named_modules():
        for b in getattr(m, "checkpoint_buffers", ()):  # e.g. AdaRound's hard decisions
            t = getattr(m, b, None)
            if isinstance(t, Tensor):
                out[f"{mname}.{b}" if mname else b] = t.detach()
        if isinstance(m, AffineQuantizer):
            for b in _QUANT_BUFFERS:
                t = getattr(m, b, None)
                if isinstance(t, Tensor):
                    out[f"{mname}.{b}" if mname else b] = t.detach()
    return out


def load_trainable_state_dict(student: QuantizedUNet | nn.Module, state_dict: dict[str, Tensor]) -> None:
    """Load a :func:`trainable_state_dict`; raise ``ValueError`` if it is from another
    architecture or policy (different keys, shapes or quantizer bit specs). Nothing is changed
    when it raises (except that layers named with AdaRound decisions get a rounding module)."""
    attach_roundings_for_state(student, state_dict)
    expected = trainable_state_dict(student)
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for k in sorted(set(expected) & set(state_dict)):
        if tuple(expected[k].shape) != tuple(state_dict[k].shape):
            problems.append(f"{k}: shape {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)} here")
        elif k.endswith(".spec") and not torch.equal(expected[k].cpu(), state_dict[k].cpu().to(expected[k].dtype)):
            problems.append(
                f"{k}: [bits, symmetric, per_channel] {state_dict[k].tolist()} vs {expected[k].tolist()} here"
            )
    if problems:
        raise ValueError(
            "trainable state dict does not fit this student (from another architecture or quant "
            "policy?): " + "; ".join(problems[:8])
        )
    student.load_state_dict(state_dict, strict=False)
