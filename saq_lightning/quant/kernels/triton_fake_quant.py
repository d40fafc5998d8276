"""Triton kernels of the fake quantizer: one kernel forward, one kernel backward.

Imported only when the Triton path is chosen (:mod:`.select`): ``@triton.jit`` decides at import
time whether kernels compile for the GPU or run in Triton's interpreter (``TRITON_INTERPRET=1``,
how the CPU test suite runs them).

Both kernels see ``x`` (plus an optional addend ``d``: the LoRA delta of the weight path, so
that the merge ``W + delta`` is fused too) as ``[rows, cols]`` with one ``(step, zero point)`` per
row: a sample of an activation (its timestep bucket's step, gathered) or an output channel of a
weight. The arithmetic is that of :func:`~saq_lightning.quant.functional.fake_quant_forward`
operation for operation (IEEE division, round half to even, clamp to ``[qmin - z, qmax - z]``,
multiply by ``s``), so forward values are bit-identical to the composed pieces. The backward
kernel recomputes the codes from ``x`` and writes ``dL/dx`` (straight-through) and, per row and
column block, the partial sums of the LSQ+ step and zero-point gradients; the host sums the
few partials per row (deterministic, no atomics).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

#: elements per program along a row, and per program in all
BLOCK = 1024
TILE = 4096


# Only builtins and this module's own @triton.jit functions, no tl.sum: triton's library functions
# are jitted when triton is imported, and a process that imported triton before TRITON_INTERPRET=1
# was set could not interpret them. tl.reduce with tl.sum's own combine function is the same
# reduction (the interpreter recognises it and sums with numpy; any other combine function it
# runs element by element).
_sum = tl.standard._sum_combine


@triton.jit
def _round_half_even(v):
    # torch.round: nearest integer, ties to even (v - floor(v) is exact in floating point)
    r = tl.floor(v)
    f = v - r
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    up = (f > 0.5) | ((f == 0.5) & odd)
    return tl.where(up, r + 1.0, r)


@triton.jit
def _to_bf16(x):
    # fp32 -> bf16 rounding to nearest even, as torch does (and bit-identical in the interpreter,
    # whose own cast truncates)
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + ((bits >> 16) & 1) + 0x7FFF
    bits = tl.where(x != x, 0x7FC00000, bits)  # noqa: PLR0124 - NaN test
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _store(ptr, offs, value, mask, OUT_BF16: tl.constexpr):
    if OUT_BF16:
        tl.store(ptr + offs, _to_bf16(value), mask=mask)
    else:
        tl.store(ptr + offs, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile(pid_r, pid_c, n_rows, n_cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols < n_cols)[None, :]
    offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
    return rows, row_mask, mask, offs


@triton.jit
def _codes(x_ptr, d_ptr, s_ptr, z_ptr, offs, mask, rows, row_mask, s_stride, qmin, qmax, HAS_D: tl.constexpr):
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_D:
        x = x + tl.load(d_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + rows * s_stride, mask=row_mask, other=1.0).to(tl.float32)[:, None]
    z = tl.load(z_ptr + rows * s_stride, mask=row_mask, other=0.0).to(tl.float32)[:, None]
    v = tl.div_rn(x, s)
    r = _round_half_even(v)
    nan = tl.PropagateNan.ALL  # as torch.clamp: a NaN input stays NaN (the non-finite loss guard sees it)
    t = tl.minimum(tl.maximum(r, qmin - z, propagate_nan=nan), qmax - z, propagate_nan=nan)
    return v, r, t, s


@triton.jit
def _fq_forward_kernel(x_ptr, d_ptr, s_ptr, z_ptr, out_ptr, n_rows, n_cols, s_stride, qmin, qmax,
                       HAS_D: tl.constexpr, OUT_BF16: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows, row_mask, mask, offs = _tile(tl.program_id(0), tl.program_id(1), n_rows, n_cols, BLOCK_R, BLOCK_C)
    _v, _r, t, s = _codes(x_ptr, d_ptr, s_ptr, z_ptr, offs, mask, rows, row_mask, s_stride, qmin, qmax, HAS_D)
    _store(out_ptr, offs, t * s, mask, OUT_BF16)


@triton.jit
def _fq_backward_kernel(g_ptr, x_ptr, d_ptr, s_ptr, z_ptr, gx_ptr, ps_ptr, pz_ptr, n_rows, n_cols, n_blocks, s_stride,
                        qmin, qmax, HAS_D: tl.constexpr, NEED_X: tl.constexpr, OUT_BF16: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    blk = tl.program_id(1)
    rows, row_mask, mask, offs = _tile(tl.program_id(0), blk, n_rows, n_cols, BLOCK_R, BLOCK_C)
    v, r, t, _s = _codes(x_ptr, d_ptr, s_ptr, z_ptr, offs, mask, rows, row_mask, s_stride, qmin, qmax, HAS_D)
    inside = (t == r).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    gx = g * inside
    if NEED_X:
        _store(gx_ptr, offs, gx, mask, OUT_BF16)
    ds = t - v * inside  # round(v) - v inside the range, qmin/qmax - z where clamped
    part = rows.to(tl.int64) * n_blocks + blk
    tl.store(ps_ptr + part, tl.reduce(tl.where(mask, g * ds, 0.0), 1, _sum), mask=row_mask)
    tl.store(pz_ptr + part, tl.reduce(tl.where(mask, g - gx, 0.0), 1, _sum), mask=row_mask)


def _blocks(rows: int, cols: int) -> tuple[int, int]:
    """Tile ``(BLOCK_R, BLOCK_C)``: up to :data:`BLOCK` columns of a row, and as many rows as make
    :data:`TILE` elements (a weight's short rows share a program)."""
    block_c = min(BLOCK, triton.next_power_of_2(max(1, cols)))
    return max(1, min(triton.next_power_of_2(max(1, rows)), TILE // block_c)), block_c


def _rows(x: Tensor, step: Tensor) -> tuple[int, int, int]:
    """``(rows, cols, step stride)``: ``step`` is one value per leading index of ``x`` or one in all."""
    rows = x.shape[0]
    if step.numel() not in (1, rows):
        raise ValueError(f"fused fake-quant: {step.numel()} steps for {rows} rows of {tuple(x.shape)}")
    return rows, x.numel() // max(1, rows), int(step.numel() != 1)


def fake_quant_rows_forward(x: Tensor, d: Tensor | None, step: Tensor, zero_point: Tensor, qmin: int, qmax: int,
                            out_dtype: torch.dtype) -> Tensor:
    """``fake_quant_forward(x (+ d), step, zero_point)`` with per-row step/zero point, as ``out_dtype``."""
    x = x.contiguous()
    rows, cols, stride = _rows(x, step)
    out = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    if x.numel() == 0:
        return out
    d = d.contiguous() if d is not None else x
    br, bc = _blocks(rows, cols)
    grid = (triton.cdiv(rows, br), triton.cdiv(cols, bc))
    _fq_forward_kernel[grid](x, d, step.contiguous(), zero_point.contiguous(), out, rows, cols, stride, qmin, qmax,
                             HAS_D=d is not x, OUT_BF16=out_dtype == torch.bfloat16, BLOCK_R=br, BLOCK_C=bc)
    return out


def fake_quant_rows_backward(grad: Tensor, x: Tensor, d: Tensor | None, step: Tensor, zero_point: Tensor,
                             qmin: int, qmax: int, gx_dtype: torch.dtype | None
                             ) -> tuple[Tensor | None, Tensor, Tensor]:
    """``(dL/dx or None, sum_cols(g * ds) per row, sum_cols(g * clamped) per row)`` (fp32 rows).

    ``gx_dtype`` ``None``: the input gradient is not needed and not written."""
    x = x.contiguous()
    rows, cols, stride = _rows(x, step)
    br, bc = _blocks(rows, cols)
    n_blocks = max(1, triton.cdiv(cols, bc))
    ps = torch.zeros(rows, n_blocks, dtype=torch.float32, device=x.device)
    pz = torch.zeros_like(ps)
    gx = torch.empty(x.shape, dtype=gx_dtype, device=x.device) if gx_dtype is not None else None
    if x.numel():
        d = d.contiguous() if d is not None else x
        _fq_backward_kernel[(triton.cdiv(rows, br), n_blocks)](
            grad.contiguous(), x, d, step.contiguous(), zero_point.contiguous(), gx if gx is not None else ps,
            ps, pz, rows, cols, n_blocks, stride, qmin, qmax, HAS_D=d is not x, NEED_X=gx is not None,
            OUT_BF16=gx_dtype == torch.bfloat16, BLOCK_R=br, BLOCK_C=bc)
    return gx, ps.sum(1), pz.sum(1)
