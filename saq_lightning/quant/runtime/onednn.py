"""oneDNN's x86 int8 convolution and linear kernels for the CPU runtime (``kernel="onednn"``).

The ops PyTorch's own x86 int8 path (PT2E + ``X86InductorQuantizer``) lowers to:
``onednn::qconv2d_pointwise`` / ``onednn::qlinear_pointwise`` on a weight prepacked once. They take
``uint8`` activations with a per-tensor scale and zero point *per call* (so the student's
per-timestep-bucket tables still apply) and a per-output-channel weight scale, accumulate
``sum (q_x - z_x) w`` in int32 and write ``acc * s_x * s_w + bias`` in fp32: no im2col in memory,
the epilogue fused. The weight must be symmetric int8, so a layer runs here when its codes minus
their zero point fit int8 (always for <= 7-bit codes; 8-bit codes per layer).

Without VNNI (or AMX) oneDNN sums ``u8 * s8`` pairs in int16 and saturates at full ``u8`` range;
:func:`onednn_unavailable` checks the sums on this machine with the extreme codes before any layer
uses the kernels, so a CPU where they are not exact never runs them.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor


def _ops():
    return torch.ops.onednn


@functools.cache
def onednn_unavailable() -> str | None:
    """Why the oneDNN int8 kernels cannot run exactly here (``None``: they can). Checked once per
    process: the ops exist, and an int8 conv of the extreme codes (``u8`` 255 against ``s8`` -128
    and 127, 576 products per output) and of random codes equals the int64 sum."""
    if not torch.backends.mkldnn.is_available():
        return "PyTorch was built without oneDNN (mkldnn)"
    if not all(hasattr(_ops(), op) for op in ("qconv_prepack", "qconv2d_pointwise", "qlinear_prepack",
                                               "qlinear_pointwise")):
        return "this PyTorch has no onednn::qconv2d_pointwise / qlinear_pointwise ops"
    g = torch.Generator().manual_seed(0)
    c = 64
    w = torch.randint(-128, 128, (4, c, 3, 3), dtype=torch.int8, generator=g)
    w[0], w[1] = -128, 127
    x = torch.randint(0, 256, (1, c, 4, 4), dtype=torch.uint8, generator=g)
    x[..., 1:3, 1:3] = 255
    try:
        got = conv2d(x, 1.0, 0, prepack_conv(w, (1, 1), (1, 1)), torch.ones(4), None, (1, 1), (1, 1))
    except (RuntimeError, NotImplementedError) as e:
        return f"oneDNN int8 conv failed here: {str(e).splitlines()[0]}"
    want = torch.nn.functional.conv2d(x.double(), w.double(), None, 1, 1)
    if not torch.equal(got.double(), want):
        return ("oneDNN's int8 conv is not exact on this CPU (u8*s8 pairs saturate in int16 without "
                "VNNI/AMX)")
    return None


def prepack_conv(weight: Tensor, stride: tuple[int, ...], padding: tuple[int, ...],
                 x_shape: tuple[int, ...] | None = None) -> Tensor:
    """The symmetric int8 weight ``[N, C, kh, kw]`` in oneDNN's blocked layout (opaque, CPU) for
    inputs of ``x_shape`` (another shape makes every call reorder the weight)."""
    n = weight.shape[0]
    return _ops().qconv_prepack(weight.contiguous(), torch.ones(n), 1.0, 0, list(stride), list(padding),
                                [1, 1], 1, None if x_shape is None else list(x_shape))


def prepack_linear(weight: Tensor, x_shape: tuple[int, ...] | None = None) -> Tensor:
    """The symmetric int8 weight ``[N, K]`` in oneDNN's layout (for inputs of ``x_shape``)."""
    return _ops().qlinear_prepack(weight.contiguous(), None if x_shape is None else list(x_shape))


def conv2d(qx: Tensor, x_scale: float, x_zero: int, packed: Tensor, w_scale: Tensor, bias: Tensor | None,
           stride: tuple[int, ...], padding: tuple[int, ...], out_dtype: torch.dtype = torch.float32) -> Tensor:
    """``sum (qx - x_zero) w * x_scale * w_scale + bias`` (``qx`` uint8 NCHW, any memory format;
    the output is channels last)."""
    n = w_scale.shape[0]
    return _ops().qconv2d_pointwise(qx, float(x_scale), int(x_zero), packed, w_scale,
                                    torch.zeros(n, dtype=torch.int32), bias, list(stride), list(padding),
                                    [1, 1], 1, 1.0, 0, out_dtype, "none", [], "")


def linear(qx: Tensor, x_scale: float, x_zero: int, packed: Tensor, w_scale: Tensor, bias: Tensor | None,
           out_dtype: torch.dtype = torch.float32) -> Tensor:
    """``sum_k (qx - x_zero) w * x_scale * w_scale + bias`` over the last dimension of ``qx`` (uint8)."""
    n = w_scale.shape[0]
    return _ops().qlinear_pointwise(qx, float(x_scale), int(x_zero), packed, w_scale,
                                    torch.zeros(n, dtype=torch.int32), bias, 1.0, 0, out_dtype, "none", [], "")
