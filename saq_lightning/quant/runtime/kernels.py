"""Integer kernels of the low-bit runtime: int8 x int8 -> int32 GEMM, im2col, int4 unpacking.

Plain int8 tensors and ``torch._int_mm`` (the path torchao uses) instead of PyTorch's deprecated
quantized tensor types. ``_int_mm`` has shape rules on CUDA (``M > 16``, ``K`` and ``N`` multiples
of 8); :func:`int8_gemm` pads ``M``/``K``/``N`` with zero rows/columns (zero contributions, so the
int32 result is unchanged) where the device needs it. The CPU accepts any shape (checked with
torch 2.14: 1x3x5 gives the exact product).

Where a device has no int8 GEMM at all, :func:`probe_int8_gemm` says so and the loader either
raises (default) or uses :func:`emulated_gemm`: the same integer product computed in float64
(exact: integers below 2**53), stated as a fallback in the runtime report.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _needs_padding(device: torch.device) -> tuple[int, int, int]:
    """(minimum M, K multiple, N multiple) that ``_int_mm`` needs on ``device``."""
    if device.type == "cuda":
        return 17, 8, 8
    return 1, 1, 1


def int8_gemm(a: Tensor, w: Tensor) -> Tensor:
    """``a [M, K] int8 @ w[N, K]^T int8 -> [M, N] int32`` with ``torch._int_mm`` (exact)."""
    m, k = a.shape
    n = w.shape[0]
    min_m, k_mult, n_mult = _needs_padding(a.device)
    pm, pk, pn = max(min_m, m) - m, _round_up(k, k_mult) - k, _round_up(n, n_mult) - n
    if pk or pm:
        a = F.pad(a, (0, pk, 0, pm))
    if pk or pn:
        w = F.pad(w, (0, pk, 0, pn))
    out = torch._int_mm(a.contiguous(), w.contiguous().t())
    return out[:m, :n] if (pm or pn) else out


def emulated_gemm(a: Tensor, w: Tensor) -> Tensor:
    """The integer product of :func:`int8_gemm` in float64 (exact below 2**53), as int32."""
    return (a.double() @ w.double().t()).to(torch.int32)


@cache
def probe_int8_gemm(device_str: str) -> str | None:
    """``None`` if ``torch._int_mm`` runs (and is exact) on the device, else the reason it does not."""
    device = torch.device(device_str)
    try:
        a = torch.tensor([[1, -2, 3]] * 2, dtype=torch.int8, device=device)
        w = torch.tensor([[4, 5, -6], [127, -128, 1]], dtype=torch.int8, device=device)
        got = int8_gemm(a, w).cpu()
    except (RuntimeError, NotImplementedError, TypeError) as e:
        return f"torch._int_mm is not available on {device}: {str(e).splitlines()[0]}"
    want = torch.tensor([[-24, 386]] * 2, dtype=torch.int32)
    if not torch.equal(got, want):  # pragma: no cover - a broken backend
        return f"torch._int_mm on {device} returned {got.tolist()} instead of {want.tolist()}"
    return None


def cpu_int8_flags() -> str:
    """The CPU's integer dot-product flags (VNNI/AMX), as one phrase for the report."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU flags unknown"
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    found = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return "CPU flags: " + (", ".join(found) if found else "no VNNI/AMX")


def unpack_int4(stored: Tensor, numel: int) -> Tensor:
    """Packed ``uint8`` (two unsigned 4-bit codes per byte, low nibble first) -> ``[numel]`` uint8."""
    lo = stored & 0x0F
    hi = stored >> 4
    return torch.stack([lo, hi], dim=1).flatten()[:numel]


def pack_int4(u: Tensor) -> Tensor:
    """Inverse of :func:`unpack_int4` for unsigned 4-bit values (flattened)."""
    u = u.to(torch.uint8).flatten()
    if u.numel() % 2:
        u = torch.cat([u, u.new_zeros(1)])
    return (u[0::2] | (u[1::2] << 4)).contiguous()


def im2col_nhwc(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                pad_value: Tensor | None) -> tuple[Tensor, int, int]:
    """``x [B, H, W, C]`` (channels last, any dtype, e.g. int8) -> ``[B*Ho*Wo, kh*kw*C]`` rows in
    ``(i, j, c)`` order, plus ``(Ho, Wo)``. ``pad_value`` (``[B]``, or ``None`` for 0) is the
    per-sample value of the padded border (the code whose centred value is zero).

    Channels last, because then every kernel tap is one strided copy of contiguous ``C``-runs
    (an NCHW unfold + permute copies element by element, several times slower for int8)."""
    b, h, w, c = x.shape
    kh, kw = kernel
    ph, pw = padding
    sh, sw = stride
    if ph or pw:
        if pad_value is None:
            x = F.pad(x, (0, 0, pw, pw, ph, ph))
        else:
            big = pad_value.to(x.dtype).view(b, 1, 1, 1).expand(b, h + 2 * ph, w + 2 * pw, c).clone()
            big[:, ph:ph + h, pw:pw + w] = x
            x = big
    ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    if kh == kw == 1:
        cols = x[:, : (ho - 1) * sh + 1: sh, : (wo - 1) * sw + 1: sw]
        return cols.reshape(b * ho * wo, c), ho, wo
    taps = [x[:, i: i + (ho - 1) * sh + 1: sh, j: j + (wo - 1) * sw + 1: sw] for i in range(kh) for j in range(kw)]
    return torch.cat(taps, dim=-1).view(b * ho * wo, kh * kw * c), ho, wo


def storage_bytes(t: Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()



