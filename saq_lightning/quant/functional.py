"""Fake-quantization numerics: one definition shared by every quantizer, layer and the exporter.

A uniform affine quantizer with step ``s`` and integer zero point ``z`` maps ``x`` to

    q = clamp(round(x / s) + z, qmin, qmax)        (the integer code that export writes)
    y = (q - z) * s                                (the fake-quantized value the student uses)

Numerics are always fp32: inputs are cast explicitly, so a bf16 autocast region cannot turn
``x / s`` into a bf16 division (which rounds 127.4 to 128). Nothing here hard-codes a device.

Gradients (straight-through rounding, LSQ/LSQ+):

* ``dy/dx = 1`` where ``qmin <= round(x/s) + z <= qmax``, else 0;
* ``dy/ds = round(x/s) - x/s`` inside the range, ``qmin - z`` / ``qmax - z`` where clamped;
* ``dy/dz = 0`` inside the range, ``-s`` where clamped (``z`` is rounded with an STE by the
  caller, see :func:`round_ste`);
* the step and zero-point gradients are multiplied by ``grad_factor`` (LSQ: ``1/sqrt(N * qmax)``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

#: smallest step a quantizer will use (a learnt step may be pushed to or below zero).
MIN_STEP = 1e-8

SUPPORTED_BITS = range(2, 9)


def check_bits(bits: int, what: str = "bit width") -> int:
    """Return ``bits`` if it is an int in 2..8, else raise ``ValueError``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise ValueError(
            f"unsupported {what} {bits!r}: uniform quantizers here support integer widths 2..8"
        )
    return bits


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer code range: signed ``[-2^(b-1), 2^(b-1)-1]`` or unsigned ``[0, 2^b - 1]``."""
    check_bits(bits)
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def lsq_grad_factor(n_elements: int, qmax: int) -> float:
    """LSQ gradient scale ``1 / sqrt(N * Q_p)`` for a step shared by ``n_elements`` values."""
    return 1.0 / math.sqrt(max(1, n_elements) * max(1, qmax))


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def effective_step(step: Tensor) -> Tensor:
    """The step a quantizer uses: the learnt one, kept above :data:`MIN_STEP`."""
    return step.clamp_min(MIN_STEP)


def effective_zero_point(zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Integer-valued zero point (rounded and clamped), straight-through for gradients."""
    zq = torch.round(zero_point).clamp(qmin, qmax)
    return zero_point + (zq - zero_point).detach()


# ----------------------------------------------------------------------------------------------
# raw numerics (no autograd): callers pass fp32 tensors that broadcast against ``x``
# ----------------------------------------------------------------------------------------------


def quantize_codes(x: Tensor, step: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Integer codes ``clamp(round(x/s) + z, qmin, qmax)`` as an fp32 tensor of integers."""
    q = torch.div(x.float(), step.float())
    q.round_().add_(zero_point.float()).clamp_(qmin, qmax)
    return q


def dequantize(codes: Tensor, step: Tensor, zero_point: Tensor) -> Tensor:
    """``(q - z) * s`` in fp32. Bit-identical to :func:`fake_quant_forward` for the same codes."""
    return (codes.float() - zero_point.float()) * step.float()


def fake_quant_forward(x: Tensor, step: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """``(clamp(round(x/s) + z) - z) * s`` in fp32, written as ``clamp(round(x/s), qmin-z, qmax-z) * s``
    (the same numbers for an integer ``z``; four passes over ``x``, in place on one temporary)."""
    z = zero_point.float()
    s = step.float()
    q = torch.div(x.float(), s)
    return q.round_().clamp_(qmin - z, qmax - z).mul_(s)


class FQRecompute(NamedTuple):
    """Intermediates of one fake-quantization, kept for its backward."""

    out: Tensor | None  # (clamp(round(x/s) + z) - z) * s
    v: Tensor  # x / s
    t: Tensor  # clamp(round(x/s) + z) - z
    inside: Tensor  # 1.0 where the code was not clamped, else 0.0 (fp32)


def fake_quant_recompute(x: Tensor, step: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> FQRecompute:
    """Forward value plus the intermediates the gradients need (fp32, one layer's worth)."""
    z = zero_point.float()
    s = step.float()
    v = torch.div(x.float(), s)
    r = torch.round(v)
    t = torch.clamp(r, qmin - z, qmax - z)
    inside = torch.eq(t, r, out=r)  # as a 0/1 float mask (bool masks cost a conversion per use)
    return FQRecompute(t * s, v, t, inside)


def _groups(t: Tensor, ref: Tensor) -> int | None:
    """Number of leading-dim groups if ``t`` is ``[n, 1, ..., 1]`` with ``n`` in (1, ref.shape[0])."""
    if t.ndim == ref.ndim and all(d == 1 for d in t.shape[1:]) and t.shape[0] in (1, ref.shape[0]):
        return t.shape[0]
    if t.numel() == 1:
        return 1
    return None


def _group_sum(a: Tensor, shape: torch.Size, n: int | None) -> Tensor:
    if n is None:
        return a.sum_to_size(shape)
    return a.reshape(n, -1).sum(1).view(shape)


def _group_dot(a: Tensor, b: Tensor, shape: torch.Size, n: int | None) -> Tensor:
    if n is None:
        return (a * b).sum_to_size(shape)
    return torch.bmm(a.reshape(n, 1, -1), b.reshape(n, -1, 1)).view(shape)


def fake_quant_grads(
    grad: Tensor,
    rec: FQRecompute,
    step: Tensor,
    zero_point: Tensor,
    grad_factor: float,
    need_x: bool = True,
    need_step: bool = True,
    need_zero_point: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients w.r.t. ``x``, ``step``, ``zero_point`` from the intermediates of
    :func:`fake_quant_recompute` (which this consumes: ``rec.v``/``rec.t`` are overwritten).

    Per element: ``dx = inside``, ``ds = t - v * inside`` (``round(v) - v`` inside, ``qmin/qmax - z``
    where clamped), ``dz = -s * (not inside)``; step/zero-point gradients are summed to their
    shapes and scaled by ``grad_factor``.
    """
    g = grad.float()
    gx = g * rec.inside if (need_x or need_zero_point) else None
    gs = gz = None
    if need_step:
        n = _groups(step, g)
        ds = rec.t.sub_(rec.v.mul_(rec.inside))
        gs = _group_dot(g, ds, step.shape, n) * grad_factor
    if need_zero_point:
        s = step.float()
        if s.shape == zero_point.shape or s.numel() == 1:  # s is constant within each z group
            gz = (_group_sum(g - gx, zero_point.shape, _groups(zero_point, g)) * (-grad_factor) * s).reshape(zero_point.shape)
        else:
            gz = ((g - gx) * s).sum_to_size(zero_point.shape) * (-grad_factor)
    return (gx if need_x else None), gs, gz


class FakeQuantize(torch.autograd.Function):
    """Fake quantization with straight-through rounding and LSQ+ step/zero-point gradients.

    ``step`` and ``zero_point`` broadcast against ``x`` (per tensor, per channel, per sample);
    ``zero_point`` must already be integer-valued (see :func:`effective_zero_point`). The
    output has ``x``'s dtype; everything in between is fp32. ``keep_intermediates``: save
    ``x / s``, the clamped codes and the mask (three ``x``-sized tensors) instead of ``x``, so that
    backward does not recompute them; for a forward that is itself a recomputation in backward.
    """

    @staticmethod
    def forward(ctx, x, step, zero_point, qmin: int, qmax: int, grad_factor: float,  # type: ignore[override]
                keep_intermediates: bool = False):
        ctx.q = (qmin, qmax, grad_factor, x.dtype)
        ctx.rec = None
        if keep_intermediates and any(ctx.needs_input_grad[:3]):
            rec = fake_quant_recompute(x, step, zero_point, qmin, qmax)
            ctx.rec = rec._replace(out=None)  # not the output: no reference cycle through ctx
            ctx.save_for_backward(None, step, zero_point)
            return rec.out.to(x.dtype)
        ctx.save_for_backward(x, step, zero_point)
        return fake_quant_forward(x, step, zero_point, qmin, qmax).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, step, zero_point = ctx.saved_tensors
        qmin, qmax, gf, x_dtype = ctx.q
        rec, ctx.rec = ctx.rec, None
        if rec is None:
            rec = fake_quant_recompute(x, step, zero_point, qmin, qmax)
        n_x, n_s, n_z = ctx.needs_input_grad[:3]
        gx, gs, gz = fake_quant_grads(grad, rec, step, zero_point, gf, n_x, n_s, n_z)
        return (
            None if gx is None else gx.to(x_dtype),
            None if gs is None else gs.to(step.dtype),
            None if gz is None else gz.to(zero_point.dtype),
            None,
            None,
            None,
            None,
        )


def fake_quantize(
    x: Tensor, step: Tensor, zero_point: Tensor, qmin: int, qmax: int, grad_factor: float = 1.0,
    keep_intermediates: bool = False,
) -> Tensor:
    """Functional form of :class:`FakeQuantize` (without grad: its forward alone)."""
    if not torch.is_grad_enabled():
        return fake_quant_forward(x, step, zero_point, qmin, qmax).to(x.dtype)
    return FakeQuantize.apply(x, step, zero_point, qmin, qmax, grad_factor, keep_intermediates)
