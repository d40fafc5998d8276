"""Fused "merge LoRA + fake-quantize weight + fake-quantize input + conv/linear" functions.

Why fused: the plain autograd chain ``conv(fq(x), fq(W + s B A))`` keeps, per layer, the input
``x`` (for the quantizer's backward) *and* ``fq(x)`` (for the conv's backward), plus the merged
and the quantized weight: one extra activation-sized and two weight-sized tensors per layer, i.e.
a second FP copy of every weight during the step. Here only ``x`` (which the FP layer keeps too)
and the small LoRA factors are saved; the merged weight, ``fq(w)`` and ``fq(x)`` are recomputed
in backward (elementwise passes and one rank-r matmul).

The numerics are those of :mod:`saq_lightning.quant.functional` (fp32 quantization), so the
fused and the unfused path give identical values and gradients. Inside these functions autocast
is off and dtypes are explicit: ``compute_dtype`` is what the conv/matmul runs in (the autocast
dtype inside an autocast region, else the layer's weight dtype), as autocast would do for the
plain layer.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .functional import MIN_STEP, fake_quant_forward, fake_quant_grads, fake_quant_recompute


@dataclass(frozen=True)
class FusedSpec:
    """Static (non-tensor) description of a quantized layer call."""

    a_qrange: tuple[int, int] = (0, 255)
    a_grad_factor: float = 1.0
    w_qrange: tuple[int, int] = (0, 15)
    w_grad_factor: float = 1.0
    lora_scaling: float = 1.0
    # conv only
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0)
    dilation: tuple[int, ...] = (1, 1)
    groups: int = 1


def merge_lora(weight: Tensor, lora_a: Tensor | None, lora_b: Tensor | None, scaling: float) -> Tensor:
    """``W + scaling * B @ A`` (at least fp32 if LoRA is present; ``W`` itself otherwise)."""
    if lora_a is None:
        return weight
    dt = torch.promote_types(weight.dtype, torch.float32)
    delta = (lora_b.to(dt) * scaling).matmul(lora_a.to(dt).flatten(1))
    return weight.to(dt) + delta.view(weight.shape)


def _no_autocast(device_type: str):
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()


def _table_params(step: Tensor, zero_point: Tensor, qrange: tuple[int, int], idx: Tensor | None, ndim: int):
    """Effective (step, integer zero point) shaped ``[n, 1, ..., 1]`` for an ``ndim`` tensor.

    ``idx`` (per-sample buckets) gathers rows of a per-timestep table; without it ``step`` is
    per output channel (or per tensor). Same values as ``AffineQuantizer.effective()``.
    """
    s = step.clamp_min(MIN_STEP)
    z = torch.round(zero_point).clamp_(*qrange)
    if idx is not None:
        s, z = s[idx], z[idx]
    view = (s.shape[0],) + (1,) * (ndim - 1)
    return s.view(view), z.view(view)


def _table_grads(gs: Tensor | None, gz: Tensor | None, step: Tensor, zero_point: Tensor, idx: Tensor | None):
    """Chain rule from per-row gradients back to the parameters: ``clamp_min`` masks the step,
    the rounded zero point is straight-through, and a gathered table scatters-adds per bucket."""
    if gs is not None:
        gs = gs.reshape(-1)
        mask = (step[idx] if idx is not None else step) > MIN_STEP  # as torch's clamp_min backward
        gs = gs * mask
        if idx is not None:
            gs = torch.zeros_like(step, dtype=gs.dtype).index_add_(0, idx.expand(gs.shape[0]), gs)
        gs = gs.view(step.shape)
    if gz is not None:
        gz = gz.reshape(-1)
        if idx is not None:
            gz = torch.zeros_like(zero_point, dtype=gz.dtype).index_add_(0, idx.expand(gz.shape[0]), gz)
        gz = gz.view(zero_point.shape)
    return gs, gz


class _FusedBase(torch.autograd.Function):
    """forward(x, W, A, B, bias, a_step, a_zp, a_idx, w_step, w_zp, spec, compute_dtype).

    ``a_step``/``a_zp``: the ``[n_buckets]`` activation table and ``a_idx`` the per-sample bucket
    indices (``None``: no activation quantization); ``w_step``/``w_zp``: ``[C]`` (or ``[1]``) weight
    parameters (``None``: no weight quantization). Taking the raw parameters (instead of gathered,
    clamped views) keeps the whole layer one autograd node.
    """

    @staticmethod
    def _op(xq: Tensor, wq: Tensor, bias: Tensor | None, spec: FusedSpec) -> Tensor:
        raise NotImplementedError

    @staticmethod
    def _op_backward(g, xq, wq, has_bias, spec, mask) -> tuple:
        raise NotImplementedError

    @classmethod
    def _forward(cls, ctx, x, W, A, B, bias, a_step, a_zp, a_idx, w_step, w_zp, spec, cdt):
        a_s = a_z = w_s = w_z = None
        with _no_autocast(x.device.type):
            w = merge_lora(W, A, B, spec.lora_scaling)
            if w_step is not None:
                w_s, w_z = _table_params(w_step, w_zp, spec.w_qrange, None, w.ndim)
                w = fake_quant_forward(w, w_s, w_z, *spec.w_qrange)
            if a_step is not None:
                a_s, a_z = _table_params(a_step, a_zp, spec.a_qrange, a_idx, x.ndim)
                xq = fake_quant_forward(x, a_s, a_z, *spec.a_qrange)
            else:
                xq = x
            out = cls._op(xq.to(cdt), w.to(cdt), None if bias is None else bias.to(cdt), spec)
        # the effective (step, zero point) rows are tiny: keep them instead of recomputing
        ctx.save_for_backward(x, W, A, B, bias, a_step, a_zp, a_idx, w_step, w_zp, a_s, a_z, w_s, w_z)
        ctx.spec = spec
        ctx.cdt = cdt
        return out

    @classmethod
    def _backward(cls, ctx, grad_out):
        x, W, A, B, bias, a_step, a_zp, a_idx, w_step, w_zp, a_s, a_z, w_s, w_z = ctx.saved_tensors
        spec: FusedSpec = ctx.spec
        cdt = ctx.cdt
        n_x, n_W, n_A, n_B, n_b, n_as, n_az, _, n_ws, n_wz = ctx.needs_input_grad[:10]
        need_xq = n_x or n_as or n_az
        need_wq = n_W or n_A or n_B or n_ws or n_wz
        need_b = bias is not None and n_b
        with _no_autocast(grad_out.device.type):
            w = merge_lora(W, A, B, spec.lora_scaling)
            w_rec = None if w_s is None else fake_quant_recompute(w, w_s, w_z, *spec.w_qrange)
            x_rec = None if a_s is None else fake_quant_recompute(x, a_s, a_z, *spec.a_qrange)
            xq = (x if x_rec is None else x_rec.out).to(cdt)
            wq = (w if w_rec is None else w_rec.out).to(cdt)
            del w
            gxq, gwq, gb = cls._op_backward(grad_out.to(cdt), xq, wq, bias is not None, spec, (need_xq, need_wq, need_b))
            del xq, wq

            gx = ga_s = ga_z = None
            if gxq is not None:
                if x_rec is None:
                    gx = gxq
                else:
                    gx, ga_s, ga_z = fake_quant_grads(gxq, x_rec, a_s, a_z, spec.a_grad_factor, n_x, n_as, n_az)
                    ga_s, ga_z = _table_grads(ga_s, ga_z, a_step, a_zp, a_idx)
            del x_rec, gxq
            gw = gA = gB = gw_s = gw_z = None
            if gwq is not None:
                if w_rec is None:
                    gw = gwq
                else:
                    need_w = n_W or n_A or n_B
                    gw, gw_s, gw_z = fake_quant_grads(gwq, w_rec, w_s, w_z, spec.w_grad_factor, need_w, n_ws, n_wz)
                    gw_s, gw_z = _table_grads(gw_s, gw_z, w_step, w_zp, None)
                if A is not None and (n_A or n_B):
                    dt = torch.promote_types(W.dtype, torch.float32)
                    g2 = gw.to(dt).flatten(1) * spec.lora_scaling
                    gB = g2.matmul(A.to(dt).flatten(1).t()) if n_B else None
                    gA = B.to(dt).t().matmul(g2).view(A.shape) if n_A else None

        def cast(t, like):
            return None if t is None else t.to(like.dtype)

        return (
            cast(gx, x) if n_x else None,
            cast(gw, W) if n_W else None,
            cast(gA, A),
            cast(gB, B),
            cast(gb, bias) if need_b else None,
            cast(ga_s, a_step),
            cast(ga_z, a_zp),
            None,
            cast(gw_s, w_step),
            cast(gw_z, w_zp),
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
    def forward(ctx, x, W, A, B, bias, a_step, a_zp, a_idx, w_step, w_zp, spec, cdt):  # type: ignore[override]
        return QuantConv2dFunction._forward(ctx, x, W, A, B, bias, a_step, a_zp, a_idx, w_step, w_zp, spec, cdt)

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
        gx = g2.matmul(wq).view(xq.shape) if need_x else None
        gw = g2.t().matmul(xq.reshape(-1, xq.shape[-1])) if need_w else None
        gb = g2.sum(0) if need_b else None
        return gx, gw, gb

    @staticmethod
    def forward(ctx, x, W, A, B, bias, a_step, a_zp, a_idx, w_step, w_zp, spec, cdt):  # type: ignore[override]
        return QuantLinearFunction._forward(ctx, x, W, A, B, bias, a_step, a_zp, a_idx, w_step, w_zp, spec, cdt)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        return QuantLinearFunction._backward(ctx, grad_out)
