"""Triton int8 implicit-GEMM convolution (k x k, any stride/padding, channels last), with the
runtime's whole epilogue fused in. Linear layers and 1x1 convs use the same kernel as a
``1 x 1`` convolution over ``[M, 1, 1, K]`` (:mod:`.triton_gemm`).

The kernel computes, for output row ``m`` (one output pixel of sample ``b``) and channel ``n``::

    acc = sum_k A'[m, k] W'[n, k]                       (int8 x int8 -> int32, ``tl.dot``)
        + rowsum(A')[m] * dw[n] + da[b] * (colsum(W')[n] + K dw[n])    (zero-point corrections)
    y   = acc * (s_x[b] * s_w[n]) + bias[n]              (fp32, stored as fp32 or bf16)

with ``q_x - z_x = A' + da`` and ``q_w - z_w = W' + dw`` (see :mod:`.layers`), so ``acc`` is the
exact ``sum_k (q_x - z_x)(q_w - z_w)``. ``K = C kh kw`` runs over ``(i, j, c)``; the activation
tile of tap ``(i, j)`` is read straight from the ``[B, H, W, C]`` int8 input (no im2col in
memory); border taps read the code whose centred value is zero (``-da``). The weight is read
from the export's own layout (``[N, C, kh, kw]`` flattened; 8-bit: one int8 per code; 4-bit: two
unsigned codes per byte, low nibble first, unpacked in the kernel), so W4 stays packed in memory.

The activation quantization itself (``round(x / s)``) is not fused: Triton's fp32 division on
CUDA is not IEEE-rounded, which would move codes away from the student's.

The kernel is compiled lazily per mode (``TRITON_INTERPRET`` is read when ``triton.jit`` wraps the
function), so the CPU interpreter runs exactly the same kernel source in the tests.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import torch
from torch import Tensor

try:  # only the kernel source needs it; importing it compiles nothing
    import triton.language as tl
except ImportError:  # pragma: no cover - a torch build without Triton
    tl = None

#: Tile configurations tried by the autotuner on a GPU (the UNet's shapes: M = B*H*W from 64 to
#: 32*64*64, N and C from 128 to 1280); the interpreter runs :func:`interpreter_config` only.
GPU_CONFIGS = (
    {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "num_warps": 4, "num_stages": 4},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "num_warps": 8, "num_stages": 3},
    {"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 128, "num_warps": 4, "num_stages": 3},
)


def interpreter_config(m: int, n: int, c: int) -> dict[str, int]:
    """The interpreter's one config per shape: tiles just covering the problem (powers of two,
    16 to 128/64/64), since it runs every program instance as numpy calls and the cost is their
    number; a dimension past the cap still spans several tiles (its masks are exercised)."""
    def fit(x: int, hi: int) -> int:
        return max(16, min(hi, 1 << (max(x, 1) - 1).bit_length()))
    return {"BLOCK_M": fit(m, 128), "BLOCK_N": fit(n, 64), "BLOCK_K": fit(c, 64)}


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_unavailable(device: torch.device) -> str | None:
    """``None`` if the Triton kernels can run on ``device``, else why not (one line)."""
    if tl is None:
        return "Triton is not installed"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreting():
        return None
    return f"Triton kernels run on CUDA devices (or on the CPU under TRITON_INTERPRET=1), not on {device}"


def _igemm_int8(x_ptr, w_ptr, out_ptr, dw_ptr, da_ptr, col_ptr, sx_ptr, sw_ptr, bias_ptr,
                M, N, C, H, W, HO, WO, ROWS, STRIDE_H, STRIDE_W, PAD_H, PAD_W,
                KH: tl.constexpr, KW: tl.constexpr, W4: tl.constexpr, HAS_DW: tl.constexpr,
                CENTRE_W: tl.constexpr,
                HAS_DA: tl.constexpr, HAS_BIAS: tl.constexpr, RAW: tl.constexpr,
                OUT_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    sample = rm // ROWS
    pix = rm % (HO * WO)
    img = rm // (HO * WO)
    oh = pix // WO
    ow = pix % WO
    k_total = C * KH * KW
    acc = tl.full((BLOCK_M, BLOCK_N), 0, tl.int32)
    rowsum = tl.full((BLOCK_M, BLOCK_N), 0, tl.int32)  # every column: rowsum(A')
    if CENTRE_W:
        dw_c = tl.load(dw_ptr + rn, mask=n_ok, other=0)
    if HAS_DA:
        pad_code = (0 - tl.load(da_ptr + sample, mask=m_ok, other=0)).to(tl.int8)
    else:
        pad_code = tl.full((BLOCK_M,), 0, tl.int8)
    for tap in range(KH * KW):
        i = tap // KW
        j = tap % KW
        ih = oh * STRIDE_H - PAD_H + i
        iw = ow * STRIDE_W - PAD_W + j
        inside = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        base = ((img * H + ih) * W + iw) * C
        for c0 in range(0, C, BLOCK_K):
            rc = c0 + tl.arange(0, BLOCK_K)
            c_ok = rc < C
            a = tl.load(x_ptr + base[:, None] + rc[None, :], mask=inside[:, None] & c_ok[None, :], other=0)
            # border taps hold the zero code (-da); channels past C keep the masked load's 0
            a = tl.where(inside[:, None] | ~c_ok[None, :], a, pad_code[:, None])
            flat = rn[None, :] * k_total + rc[:, None] * (KH * KW) + tap
            w_mask = n_ok[None, :] & c_ok[:, None]
            if W4:
                byte = tl.load(w_ptr + flat // 2, mask=w_mask, other=0)
                w = ((byte >> ((flat % 2) * 4).to(tl.uint8)) & 0xF).to(tl.int8)
            else:
                w = tl.load(w_ptr + flat, mask=w_mask, other=0)
            if CENTRE_W:  # q_w - z_w = W' + dw fits int8: centre here, no rowsum term
                w = tl.where(w_mask, w.to(tl.int32) + dw_c[None, :], 0).to(tl.int8)
            acc = tl.dot(a, w, acc, out_dtype=tl.int32)
            if HAS_DW:  # a reduction by tl.dot with ones (tl.sum is a jitted library call)
                rowsum = tl.dot(a, tl.full((BLOCK_K, BLOCK_N), 1, tl.int8), rowsum, out_dtype=tl.int32)
    if HAS_DW:
        dw = tl.load(dw_ptr + rn, mask=n_ok, other=0)
        acc += rowsum * dw[None, :]
    if HAS_DA:
        da = tl.load(da_ptr + sample, mask=m_ok, other=0)
        col = tl.load(col_ptr + rn, mask=n_ok, other=0)
        acc += da[:, None] * col[None, :]
    out_off = rm[:, None] * N + rn[None, :]
    out_mask = m_ok[:, None] & n_ok[None, :]
    if RAW:
        tl.store(out_ptr + out_off, acc, mask=out_mask)
    else:
        sx = tl.load(sx_ptr + sample, mask=m_ok, other=0.0)
        sw = tl.load(sw_ptr + rn, mask=n_ok, other=0.0)
        y = acc.to(tl.float32) * (sx[:, None] * sw[None, :])
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + rn, mask=n_ok, other=0.0)[None, :]
        if OUT_BF16:
            # round to nearest even by bits: the same on a GPU and in the interpreter (whose own
            # fp32 -> bf16 cast truncates)
            bits = y.to(tl.uint32, bitcast=True)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint32)
            rounded = tl.where(y == y, rounded, 0x7FC0).to(tl.uint16)  # noqa: PLR0124 (NaN stays NaN)
            tl.store(out_ptr + out_off, rounded.to(tl.bfloat16, bitcast=True), mask=out_mask)
        else:
            tl.store(out_ptr + out_off, y, mask=out_mask)


@cache
def _kernel(interpret: bool) -> Any:
    """The jitted kernel (autotuned on a GPU, one fixed config in the interpreter)."""
    import triton

    jitted = triton.jit(_igemm_int8)
    if interpret:
        return jitted
    configs = [
        triton.Config({k: v for k, v in c.items() if k.startswith("BLOCK")}, num_warps=c["num_warps"],
                      num_stages=c["num_stages"])
        for c in GPU_CONFIGS
    ]
    return triton.autotune(configs, key=["M", "N", "C", "KH", "KW", "W4"])(jitted)


def conv2d_int8(
    a: Tensor,
    qweight: Tensor,
    weight_shape: tuple[int, int, int, int],
    *,
    int4_packed: bool,
    centre_weight: bool = False,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dw: Tensor | None = None,
    col: Tensor | None = None,
    da: Tensor | None = None,
    sx: Tensor | None = None,
    sw: Tensor | None = None,
    bias: Tensor | None = None,
    rows_per_sample: int | None = None,
    out_dtype: torch.dtype = torch.float32,
    raw: bool = False,
) -> Tensor:
    """Int8 convolution of ``a [B, H, W, C]`` (int8, channels last) with the export's weight codes.

    Args:
        qweight: the export's stored codes of ``weight_shape = (N, C, kh, kw)``: int8 (one per
            code) or, with ``int4_packed``, uint8 with two unsigned codes per byte.
        dw: ``[N]`` int32, ``q_w - z_w = W' + dw`` (``None``: 0).
        centre_weight: ``W' + dw`` fits int8 for every weight (always for 4-bit codes): the
            kernel adds ``dw`` to the weight tile instead of adding ``rowsum(A') dw`` (a second
            ``tl.dot`` against ones) at the end.
        col: ``[N]`` int32 ``colsum(W') + K dw`` (needed with ``da``).
        da: ``[B]`` int32, ``q_x - z_x = A' + da`` per sample (``None``: 0).
        sx, sw: ``[B]`` activation and ``[N]`` weight steps (fp32); bias ``[N]`` fp32.
        rows_per_sample: output rows of one sample (default ``Ho * Wo``; a Linear over
            ``[B, L, K]`` passes ``L``).
        raw: return the int32 accumulator ``[B, Ho, Wo, N]`` instead of the scaled output.

    Returns ``[B, Ho, Wo, N]`` (channels last) in ``out_dtype`` (fp32 or bf16), or int32 if ``raw``.
    """
    b, h, w, c = a.shape
    n, c_w, kh, kw = weight_shape
    if c_w != c:
        raise ValueError(f"conv2d_int8: input has {c} channels, weight {weight_shape} expects {c_w}")
    if out_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"conv2d_int8: out_dtype {out_dtype} (fp32 or bf16 expected)")
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (w + 2 * padding[1] - kw) // stride[1] + 1
    m = b * ho * wo
    interpret = interpreting()
    out = torch.empty(b, ho, wo, n, device=a.device, dtype=torch.int32 if raw else out_dtype)
    dummy_i = torch.zeros(1, dtype=torch.int32, device=a.device)
    dummy_f = torch.zeros(1, dtype=torch.float32, device=a.device)
    if da is not None and col is None:
        raise ValueError("conv2d_int8: da needs col = colsum(W') + K dw")
    if not raw and (sx is None or sw is None):
        raise ValueError("conv2d_int8: the scaled output needs sx and sw (or raw=True)")
    args = (
        a.contiguous(), qweight.contiguous(), out,
        dummy_i if dw is None else dw.to(torch.int32).contiguous(),
        dummy_i if da is None else da.to(torch.int32).contiguous(),
        dummy_i if col is None else col.to(torch.int32).contiguous(),
        dummy_f if sx is None else sx.float().contiguous(),
        dummy_f if sw is None else sw.float().contiguous(),
        dummy_f if bias is None else bias.float().contiguous(),
        m, n, c, h, w, ho, wo, rows_per_sample or ho * wo, stride[0], stride[1], padding[0], padding[1],
    )
    if centre_weight and dw is None:
        raise ValueError("conv2d_int8: centre_weight needs dw")
    flags = {"KH": kh, "KW": kw, "W4": int4_packed, "HAS_DW": dw is not None and not centre_weight,
             "CENTRE_W": centre_weight, "HAS_DA": da is not None,
             "HAS_BIAS": bias is not None, "RAW": raw, "OUT_BF16": out_dtype == torch.bfloat16}
    kernel = _kernel(interpret)
    if interpret:
        cfg = interpreter_config(m, n, c)
        grid = (-(-m // cfg["BLOCK_M"]), -(-n // cfg["BLOCK_N"]))
        kernel[grid](*args, **flags, **cfg)
    else:
        def grid(meta):
            return (-(-m // meta["BLOCK_M"]), -(-n // meta["BLOCK_N"]))
        kernel[grid](*args, **flags)
    return out
