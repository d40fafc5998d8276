"""Fused "fake-quantize input + fake-quantize weight + conv/linear" autograd functions.

Why fused: the unfused chain ``conv(fq(x), fq(w))`` keeps both ``x`` (for the quantizer's
backward) and ``fq(x)`` (for the conv's backward) alive until backward, i.e. one extra
activation-sized tensor per quantized layer, plus two weight-sized ones. Here only ``x`` and
the (merged) weight are saved; ``fq(x)`` and ``fq(w)`` are recomputed in backward from them,
which costs one elementwise pass and keeps activation memory at the level of the FP layer.

The numerics are those of :mod:`saq_lightning.quant.functional` (fp32 quantization), so the
fused and unfused paths give identical forward values and gradients.

``compute_dtype`` is the dtype the conv/matmul runs in (the autocast dtype inside an autocast
region, else the layer's weight dtype), mirroring what autocast would do for the plain layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import fake_quant_backward, fake_quant_forward


@dataclass(frozen=True)
class FusedSpec:
    """Static (non-tensor) description of one fused call."""

    a_qrange: tuple[int, int] = (0, 255)
    a_grad_factor: float = 1.0
    w_qrange: tuple[int, int] = (0, 15)
    w_grad_factor: float = 1.0
    # conv only
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1


def _quant_inputs(x, w, a_s, a_z, w_s, w_z, spec: FusedSpec, cdt: torch.dtype):
    xq = x if a_s is None else fake_quant_forward(x, a_s, a_z, *spec.a_qrange)
    wq = w if w_s is None else fake_quant_forward(w, w_s, w_z, *spec.w_qrange)
    return xq.to(cdt), wq.to(cdt)


class _FusedBase(torch.autograd.Function):
    """Shared backward: op backward on recomputed quantized tensors, then quantizer backward."""

    @staticmethod
    def _op(xq: Tensor, wq: Tensor, bias: Tensor | None, spec: FusedSpec) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def _op_backward(g, xq, wq, has_bias, spec, mask) -> tuple:
        raise NotImplementedError

    @classmethod
    def _forward(cls, ctx, x, w, bias, a_s, a_z, w_s, w_z, spec, cdt):
        xq, wq = _quant_inputs(x, w, a_s, a_z, w_s, w_z, spec, cdt)
        out = cls._op(xq, wq, None if bias is None else bias.to(cdt), spec)
        ctx.save_for_backward(x, w, bias, a_s, a_z, w_s, w_z)
        ctx.spec = spec
        ctx.cdt = cdt
        return out

    @classmethod
    def _backward(cls, ctx, grad_out):
        x, w, bias, a_s, a_z, w_s, w_z = ctx.saved_tensors
        spec: FusedSpec = ctx.spec
        need = ctx.needs_input_grad  # x, w, bias, a_s, a_z, w_s, w_z, spec, cdt
        need_xq = need[0] or need[3] or need[4]
        need_wq = need[1] or need[5] or need[6]
        need_b = bias is not None and need[2]
        xq, wq = _quant_inputs(x, w, a_s, a_z, w_s, w_z, spec, ctx.cdt)
        g = grad_out.to(ctx.cdt)
        gxq, gwq, gb = cls._op_backward(g, xq, wq, bias is not None, spec, (need_xq, need_wq, need_b))
        del xq, wq
        gx = ga_s = ga_z = gw = gw_s = gw_z = None
        if gxq is not None:
            if a_s is None:
                gx = gxq
            else:
                gx, ga_s, ga_z = fake_quant_backward(
                    gxq, x, a_s, a_z, *spec.a_qrange, spec.a_grad_factor,
                    need_x=need[0], need_step=need[3], need_zero_point=need[4],
                )
        if gwq is not None:
            if w_s is None:
                gw = gwq
            else:
                gw, gw_s, gw_z = fake_quant_backward(
                    gwq, w, w_s, w_z, *spec.w_qrange, spec.w_grad_factor,
                    need_x=need[1], need_step=need[5], need_zero_point=need[6],
                )

        def cast(t, like):
            return None if t is None or like is None else t.to(like.dtype)

        return (
            cast(gx, x) if need[0] else None,
            cast(gw, w) if need[1] else None,
            cast(gb, bias) if need_b else None,
            cast(ga_s, a_s),
            cast(ga_z, a_z),
            cast(gw_s, w_s),
            cast(gw_z, w_z),
            None,
            None,
        )


class QuantConv2dFunction(_FusedBase):
    @staticmethod
    def _op(xq, wq, bias, spec):
        return F.conv2d(xq, wq, bias, spec.stride, spec.padding, spec.dilation, spec.groups)

    @staticmethod
    def _op_backward(g, xq, wq, has_bias, spec, mask):
        gx, gw, gb = torch.ops.aten.convolution_backward(
            g, xq, wq, [wq.shape[0]] if has_bias else None,
            list(spec.stride), list(spec.padding), list(spec.dilation),
            False, [0, 0], spec.groups, list(mask),
        )
        return gx, gw, gb

    @staticmethod
    def forward(ctx, x, w, bias, a_s, a_z, w_s, w_z, spec, cdt):  # type: ignore[override]
        return QuantConv2dFunction._forward(ctx, x, w, bias, a_s, a_z, w_s, w_z, spec, cdt)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        return QuantConv2dFunction._backward(ctx, grad_out)


class QuantLinearFunction(_FusedBase):
    @staticmethod
    def _op(xq, wq, bias, spec):
        return F.linear(xq, wq, bias)

    @staticmethod
    def _op_backward(g, xq, wq, has_bias, spec, mask):
        need_x, need_w, need_b = mask
        g2 = g.reshape(-1, g.shape[-1])
        gx = (g2 @ wq).reshape(xq.shape) if need_x else None
        gw = g2.t() @ xq.reshape(-1, xq.shape[-1]) if need_w else None
        gb = g2.sum(0) if need_b else None
        return gx, gw, gb

    @staticmethod
    def forward(ctx, x, w, bias, a_s, a_z, w_s, w_z, spec, cdt):  # type: ignore[override]
        return QuantLinearFunction._forward(ctx, x, w, bias, a_s, a_z, w_s, w_z, spec, cdt)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        return QuantLinearFunction._backward(ctx, grad_out)
