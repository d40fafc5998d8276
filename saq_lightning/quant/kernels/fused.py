"""The quantizer pieces of a quantized layer on the fused Triton kernels (:mod:`.triton_fake_quant`).

* :func:`fused_fake_quant`: the activation piece, ``fake_quantize(x, s[bucket], z[bucket])`` with
  one (step, zero point) per sample: one kernel forward, one kernel backward (input gradient and the
  per-sample step/zero-point gradient partial sums; autograd's gather backward then adds the
  samples of each bucket into the table);
* :func:`fused_merged_fake_quant`: the weight piece, ``fake_quantize(W + s_l * B @ A)`` per output
  channel: the rank-r matmul (one GEMM) and one kernel that merges and quantizes forward; one
  kernel backward (merged-weight and per-channel step/zero-point gradients) and the two small
  GEMMs of the LoRA factors' gradients.

They are drop-in replacements for the eager pieces of :mod:`~saq_lightning.quant.layers`: same
arguments, forward values bit-identical, gradients equal to summation order. The output is
written directly in the op's compute dtype (``out_dtype``), which is what the eager piece's
``.to(compute_dtype)`` produces from its fp32 value. Only the inputs are saved for backward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops import lora_delta
from .triton_fake_quant import fake_quant_rows_backward, fake_quant_rows_forward


class FusedFakeQuantize(torch.autograd.Function):
    """``fake_quant_forward(x + d, step, zero_point)`` (``d`` optional) with STE and LSQ+ gradients;
    ``step``/``zero_point`` hold one value per leading index of ``x`` (or one for all)."""

    @staticmethod
    def forward(ctx, x, d, step, zero_point, qmin: int, qmax: int, grad_factor: float,  # type: ignore[override]
                out_dtype: torch.dtype):
        ctx.save_for_backward(x, d, step, zero_point)
        ctx.q = (qmin, qmax, grad_factor)
        return fake_quant_rows_forward(x, d, step, zero_point, qmin, qmax, out_dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, d, step, zero_point = ctx.saved_tensors
        qmin, qmax, gf = ctx.q
        n_x, n_d, n_s, n_z = ctx.needs_input_grad[:4]
        merged = torch.promote_types(x.dtype, torch.float32) if d is not None else x.dtype
        gm, ps, pz = fake_quant_rows_backward(grad, x, d, step, zero_point, qmin, qmax,
                                              merged if (n_x or n_d) else None)
        gs = gz = None
        if n_s:
            gs = (ps.sum() if step.numel() == 1 else ps).view(step.shape) * gf
        if n_z:
            rows = pz.sum() if zero_point.numel() == 1 else pz
            gz = rows.view(zero_point.shape) * (-gf) * step.float().reshape(zero_point.shape)
        return (
            gm.to(x.dtype) if n_x else None,
            gm.to(d.dtype) if n_d else None,
            None if gs is None else gs.to(step.dtype),
            None if gz is None else gz.to(zero_point.dtype),
            None, None, None, None,
        )


def fused_fake_quant(x: Tensor, step: Tensor, zero_point: Tensor, qmin: int, qmax: int, grad_factor: float,
                     out_dtype: torch.dtype) -> Tensor:
    """Activation piece: ``fake_quantize(x, step, zero_point)`` in fp32, written as ``out_dtype``."""
    if not torch.is_grad_enabled():
        return fake_quant_rows_forward(x, None, step, zero_point, qmin, qmax, out_dtype)
    return FusedFakeQuantize.apply(x, None, step, zero_point, qmin, qmax, grad_factor, out_dtype)


def fused_merged_fake_quant(scaling: float, qmin: int, qmax: int, grad_factor: float, out_dtype: torch.dtype,
                            weight: Tensor, lora_a: Tensor | None, lora_b: Tensor | None, step: Tensor,
                            zero_point: Tensor) -> Tensor:
    """Weight piece: ``fake_quantize(merge_lora(weight, lora_a, lora_b, scaling), step, zero_point)``
    per output channel, written as ``out_dtype``."""
    delta = lora_delta(weight, lora_a, lora_b, scaling)
    if not torch.is_grad_enabled():
        return fake_quant_rows_forward(weight, delta, step, zero_point, qmin, qmax, out_dtype)
    return FusedFakeQuantize.apply(weight, delta, step, zero_point, qmin, qmax, grad_factor, out_dtype)
