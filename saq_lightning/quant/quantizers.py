"""Learnable uniform affine quantizers (weights; the per-timestep activation one builds on this).

State of every quantizer:

* ``step``: learnable step size(s) (``nn.Parameter``);
* ``zero_point``: learnable (asymmetric) ``nn.Parameter`` or a zero buffer (symmetric);
  the forward uses it rounded and clamped, with a straight-through gradient;
* ``initialised``: bool buffer, so a trainable-only checkpoint restores it;
* ``spec``: int buffer ``[bits, symmetric, per_channel]``; a checkpoint from another policy
  is detected by comparing it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .functional import (
    FakeQuantize,
    check_bits,
    effective_step,
    effective_zero_point,
    lsq_grad_factor,
    qrange,
    quantize_codes,
)
from .ranges import check_init_method, init_params


class AffineQuantizer(nn.Module):
    """Common state of the weight and activation quantizers (``n`` (step, zero-point) pairs)."""

    def __init__(
        self,
        n: int,
        bits: int,
        symmetric: bool = False,
        per_channel: bool = False,
        init: str = "lp",
        p: float = 2.4,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        self.bits = check_bits(bits)
        self.symmetric = bool(symmetric)
        self.per_channel = bool(per_channel)
        self.qmin, self.qmax = qrange(bits, symmetric)
        self.init_method = check_init_method(init)
        self.p = float(p)
        self.step = nn.Parameter(torch.ones(n), requires_grad=learnable)
        if self.symmetric:
            self.register_buffer("zero_point", torch.zeros(n))
        else:
            self.zero_point = nn.Parameter(torch.zeros(n), requires_grad=learnable)
        self.register_buffer("initialised", torch.tensor(False))
        self.register_buffer(
            "spec", torch.tensor([bits, int(self.symmetric), int(self.per_channel)], dtype=torch.int32)
        )
        self._initialised = False  # python mirror: no device sync on every forward

    # -- state --------------------------------------------------------------------------------
    @property
    def is_initialised(self) -> bool:
        return self._initialised

    def mark_initialised(self) -> None:
        """Record that step/zero point hold real values (set by calibration or loaded codes)."""
        self.initialised.fill_(True)
        self._initialised = True

    def _set_params(self, step: Tensor, zero_point: Tensor, index: Tensor | slice = slice(None)) -> None:
        with torch.no_grad():
            self.step[index] = step.to(self.step)
            if not self.symmetric:
                self.zero_point[index] = zero_point.to(self.zero_point)
        self.mark_initialised()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "spec"
        if key in state_dict and not torch.equal(state_dict[key].to(self.spec), self.spec):
            got = state_dict[key].tolist()
            raise ValueError(
                f"quantizer {prefix[:-1]!r}: checkpoint has [bits, symmetric, per_channel]={got}, "
                f"this student has {self.spec.tolist()} (state dict from another quant policy?)"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._initialised = bool(self.initialised)

    def effective(self) -> tuple[Tensor, Tensor]:
        """(step, integer-valued zero point) as used by the forward, with STE gradients."""
        return effective_step(self.step), effective_zero_point(self.zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return f"bits={self.bits}, {kind}, n={self.step.numel()}, init={self.init_method}"


class WeightQuantizer(AffineQuantizer):
    """Per-output-channel (or per-tensor) learnable weight quantizer (LSQ+ gradients)."""

    def __init__(
        self,
        weight_shape: tuple[int, ...] | torch.Size,
        bits: int,
        symmetric: bool = False,
        per_channel: bool = True,
        init: str = "lp",
        p: float = 2.4,
    ) -> None:
        n = int(weight_shape[0]) if per_channel else 1
        super().__init__(n, bits, symmetric, per_channel, init, p)
        self.weight_shape = tuple(int(s) for s in weight_shape)
        self._view = (n,) + (1,) * (len(self.weight_shape) - 1)
        numel = 1
        for s in self.weight_shape:
            numel *= s
        self.grad_factor = lsq_grad_factor(numel // n, self.qmax)

    def effective(self) -> tuple[Tensor, Tensor]:
        s, z = super().effective()
        return s.view(self._view), z.view(self._view)

    def _check(self, w: Tensor) -> None:
        if tuple(w.shape) != self.weight_shape:
            raise ValueError(f"weight of shape {tuple(w.shape)} given to a quantizer for {self.weight_shape}")

    @torch.no_grad()
    def init_from(self, w: Tensor, method: str | None = None) -> None:
        """Initialise step/zero point from ``w`` (vectorised over channels)."""
        self._check(w)
        x2d = w.detach().float().reshape(self.step.numel(), -1)
        step, zp = init_params(x2d, self.qmin, self.qmax, self.symmetric, method or self.init_method, self.p)
        self._set_params(step, zp)

    def forward(self, w: Tensor) -> Tensor:
        """Fake-quantized ``w`` (the layers call the same function on the merged weight)."""
        self._check(w)
        s, z = self.effective()
        return FakeQuantize.apply(w, s, z, self.qmin, self.qmax, self.grad_factor)

    @torch.no_grad()
    def codes(self, w: Tensor) -> Tensor:
        """Integer codes of ``w`` (int16 tensor, values in ``[qmin, qmax]``)."""
        self._check(w)
        s, z = self.effective()
        return quantize_codes(w, s, z, self.qmin, self.qmax).to(torch.int16)
