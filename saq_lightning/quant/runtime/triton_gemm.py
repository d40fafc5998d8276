"""Triton int8 GEMM for Linear layers and 1x1 convs: the implicit-GEMM kernel of
:mod:`.triton_conv` run as a ``1 x 1`` convolution over ``[M, 1, 1, K]`` rows (its address
arithmetic then reduces to ``m K + k``, a plain row-major GEMM), so both layer kinds share one
epilogue and one set of exactness tests."""

from __future__ import annotations

import torch
from torch import Tensor

from .triton_conv import conv2d_int8


def linear_int8(
    a: Tensor,
    qweight: Tensor,
    weight_shape: tuple[int, int],
    *,
    int4_packed: bool,
    centre_weight: bool = False,
    dw: Tensor | None = None,
    col: Tensor | None = None,
    da: Tensor | None = None,
    sx: Tensor | None = None,
    sw: Tensor | None = None,
    bias: Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    raw: bool = False,
) -> Tensor:
    """``a [B, ..., K]`` int8 (``da``/``sx`` per sample ``[B]``) times the export's weight codes
    ``[N, K]`` -> ``[B, ..., N]`` (fp32/bf16, or the int32 accumulator if ``raw``). The arguments
    are those of :func:`.triton_conv.conv2d_int8`."""
    n, k = weight_shape
    if a.shape[-1] != k:
        raise ValueError(f"linear_int8: input has {a.shape[-1]} features, weight {weight_shape} expects {k}")
    lead = tuple(a.shape[:-1])
    rows = a.numel() // (k * a.shape[0]) if a.ndim > 1 else 1
    rows_a = a.reshape(-1, 1, 1, k)
    out = conv2d_int8(rows_a, qweight, (n, k, 1, 1), int4_packed=int4_packed, centre_weight=centre_weight, dw=dw,
                      col=col, da=da, sx=sx, sw=sw, bias=bias, rows_per_sample=rows, out_dtype=out_dtype, raw=raw)
    return out.view(*lead, n)
