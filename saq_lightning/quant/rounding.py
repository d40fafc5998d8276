"""AdaRound weight rounding: learnt up/down decisions instead of nearest rounding.

A layer with a rounding module quantizes its merged weight ``w = W (+ LoRA delta)`` as

    q = clamp(floor(w / s) + h + z, qmin, qmax)        (the integer code)
    w_q = (q - z) * s                                 (what the forward uses)

``h`` is the rectified sigmoid ``clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` of a learnt
tensor ``V`` while soft (reconstruction), and a fixed 0/1 tensor ``up`` once hardened. Hard rounding
is what a checkpoint stores (``up`` as uint8: one byte per weight) and what the export writes: the
codes of :meth:`AdaRound.codes` are the codes of the forward, bit for bit.

``floor`` has a straight-through gradient, so an SA-QLoRA run started from an SA-PTQ student trains
LoRA through the fixed rounding decisions (a LoRA delta that crosses an integer moves the code, as
nearest rounding would).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: stretch of the rectified sigmoid (AdaRound, Nagel et al. 2020)
ZETA, GAMMA = 1.1, -0.1


def _floor_ste(x: Tensor) -> Tensor:
    return x + (torch.floor(x) - x).detach()


def rectified_sigmoid(v: Tensor) -> Tensor:
    """``clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``: the soft rounding offset."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def adaround_quantize(w: Tensor, step: Tensor, zero_point: Tensor, offset: Tensor, qmin: int, qmax: int) -> Tensor:
    """``(clamp(floor(w/s) + h + z, qmin, qmax) - z) * s`` in fp32, ``floor`` straight-through
    (gradients to ``w`` and ``s`` as for ``floor(v) = v``, and to ``h``)."""
    s, z = step.float(), zero_point.float()
    q = torch.clamp(_floor_ste(w.float() / s) + offset + z, qmin, qmax)
    return (q - z) * s


class AdaRound(nn.Module):
    """Rounding decisions of one weight tensor (soft ``V`` or hard ``up``).

    Build it with :meth:`from_weight` (``h(V)`` starts at the fractional part of ``w / s``, i.e.
    the soft weight starts equal to ``w``). A quantized layer applies the decisions through
    :func:`adaround_quantize` with :meth:`offset` of :attr:`decisions`; the quantizer passed to
    :meth:`codes` provides ``s, z, qmin, qmax`` (a :class:`~saq_lightning.quant.quantizers.WeightQuantizer`).
    """

    #: buffers a trainable checkpoint must keep (see ``quant.state``)
    checkpoint_buffers = ("up",)

    def __init__(self, shape: tuple[int, ...] | torch.Size, hard: bool = True) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.V: nn.Parameter | None = None
        if hard:
            self.register_buffer("up", torch.zeros(self.shape, dtype=torch.uint8))
        else:
            self.V = nn.Parameter(torch.zeros(self.shape))
            self.register_buffer("up", None)

    @classmethod
    @torch.no_grad()
    def from_weight(cls, w: Tensor, w_quant: nn.Module) -> AdaRound:
        s, _ = w_quant.effective()
        rest = (w.detach().float() / s.float()) - torch.floor(w.detach().float() / s.float())
        rest = rest.clamp(1e-4, 1 - 1e-4)
        module = cls(w.shape, hard=False).to(w.device)
        module.V.copy_(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))
        return module

    @property
    def is_hard(self) -> bool:
        return self.V is None

    @property
    def decisions(self) -> Tensor:
        """The tensor the rounding is made of: ``V`` while soft, ``up`` once hard."""
        return self.up if self.V is None else self.V

    @staticmethod
    def offset(decisions: Tensor) -> Tensor:
        """Rounding offset of :attr:`decisions`: ``h(V)`` in ``[0, 1]``, or the 0/1 ``up``."""
        return rectified_sigmoid(decisions) if decisions.is_floating_point() else decisions.float()

    def h(self) -> Tensor:
        """Soft rounding offset in ``[0, 1]`` (the hard 0/1 tensor once hardened)."""
        return self.offset(self.decisions)

    def regulariser(self, beta: float) -> Tensor:
        """``sum(1 - |2 h - 1|^beta)``: zero when every ``h`` is exactly 0 or 1."""
        return (1.0 - (2.0 * self.h() - 1.0).abs().pow(beta)).sum()

    def hard_fraction(self, tol: float = 1e-3) -> float:
        """Fraction of ``h`` within ``tol`` of 0 or 1."""
        with torch.no_grad():
            h = self.h()
            return float(((h <= tol) | (h >= 1.0 - tol)).float().mean())

    @torch.no_grad()
    def harden(self) -> None:
        """Freeze the decisions: ``up = h(V) >= 0.5``; drop ``V``."""
        if self.V is None:
            return
        up = (self.h() >= 0.5).to(torch.uint8)
        del self.V
        self.V = None
        self.register_buffer("up", up)

    @torch.no_grad()
    def codes(self, w: Tensor, w_quant: nn.Module) -> Tensor:
        """Integer codes (int16) of the hard decisions: what the export writes."""
        s, z = w_quant.effective()
        v, z = w.float() / s.float(), z.float()
        h = self.up.float() if self.V is None else (self.h() >= 0.5).float()
        return torch.clamp(torch.floor(v) + h + z, w_quant.qmin, w_quant.qmax).to(torch.int16)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "up" in state_dict and self.V is not None:  # loading hard decisions into a soft one
            self.harden()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, {'hard' if self.is_hard else 'soft'}"


def attach_hard_rounding(layer: nn.Module) -> AdaRound:
    """Give ``layer`` (a QuantLayer) a hard rounding module (decisions to be loaded)."""
    layer.rounding = AdaRound(layer.weight_shape, hard=True).to(layer.w_quant.step.device)
    return layer.rounding


def attach_roundings_for_state(student: nn.Module, state_dict: dict[str, Tensor]) -> int:
    """Attach hard rounding modules to the layers whose ``<layer>.rounding.up`` is in
    ``state_dict`` (an SA-PTQ student's trainable state); returns how many were attached."""
    modules = dict(student.named_modules())
    n = 0
    for key in state_dict:
        if not key.endswith(".rounding.up"):
            continue
        layer = modules.get(key[: -len(".rounding.up")])
        if layer is None or not hasattr(layer, "weight_shape"):
            continue  # reported as an unexpected key by the state-dict check
        if getattr(layer, "rounding", None) is None:
            attach_hard_rounding(layer)
            n += 1
    return n
