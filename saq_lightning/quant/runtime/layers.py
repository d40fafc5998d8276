"""Runtime layers: integer weights in memory, integer (or weight-only) arithmetic.

A :class:`RuntimeLayer` replaces one ``QuantConv2d``/``QuantLinear`` of an exported student. It
keeps the weight as stored by the export (``int4x2``: two unsigned 4-bit codes per byte; 8-bit:
one int8 per code) and per-output-channel fp32 scales with int32 zero points, and uses the
student's own activation quantizer (``a_quant``) for the per-timestep-bucket step/zero point:
the bucket of each sample comes from ``a_quant.bucket_for`` (the student's mapping), never from
a re-derivation here.

Arithmetics (``arithmetic``):

* ``int8``: ``q_x = clamp(round(x/s_x) + z_x)`` (the fake-quant student's codes), then
  ``acc = sum_k (q_x - z_x)(q_w - z_w)`` exactly in int32 by an int8 GEMM, then
  ``y = acc * s_x * s_w + bias`` in fp32. Two kernels (``kernel``):

  - ``torch``: ``torch._int_mm`` (k x k convs by im2col). Codes of <= 7 bits are centred
    (``q - z`` fits int8); 8-bit codes are shifted by a constant into int8 and the zero-point
    corrections ``dw * rowsum(A) + da * colsum(W) + K da dw`` are added in int32.
  - ``triton``: the implicit-GEMM kernel of :mod:`.triton_conv` (no im2col; the weight read as
    stored, W4 unpacked in the kernel; corrections, scales, bias and the output cast fused).
  - ``onednn`` (x86 CPUs): oneDNN's int8 conv / linear (:mod:`.onednn`, what PyTorch's PT2E path
    runs) on the weight prepacked once per input shape (int8, centred on its zero point where that
    fits, else corrected by a per-channel term over the receptive field), ``uint8`` codes ``q_x - qmin``
    with the bucket's scale and zero point per call, epilogue fused. 1 byte per weight in
    oneDNN's layout.
* ``emulated``: the same integers multiplied in float64 (a stated fallback for devices without
  an int8 GEMM; exact).
* ``weight_only`` (W4A16 / W8A16): ``y = op(x, (q_w - z_w) * s_w) + bias`` with float
  activations (the weight is dequantized per call, per layer: memory first, slower than fp32).
* ``dequantized``: the ``fake`` computation (fake-quantized input, so the result is the
  student's) with the weight dequantized ONCE (when the layer is set up) and held in fp32:
  what a CPU runs where its int8 GEMM loses to float on this layer's shapes (4 bytes per
  weight instead of 0.5/1; the report states both).
* ``fake``: fake-quantized input and dequantized weight in float (what the student computes);
  used where the int8 path has no kernel (grouped or dilated convs), and stated.

Difference to the fake-quant student in ``int8``: the integer sum is exact; only the order of
the float operations differs (the student sums ``(q_x - z_x) s_x (q_w - z_w) s_w`` in fp32, here
one fp32 product of the exact sum), so outputs agree to fp32 rounding of the accumulation.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import dequantize, quantize_codes
from ..layers import QuantConv2d, QuantLayer
from ..timestep_quantizer import TimestepActQuantizer
from .kernels import (
    emulated_gemm,
    im2col_nhwc,
    int8_gemm,
    pack_int4,
    storage_bytes,
    unpack_int4,
)

ARITHMETICS = ("int8", "emulated", "dequantized", "weight_only", "fake")
KERNELS = ("torch", "triton", "onednn")

#: Largest element count one Triton launch addresses (its offsets are int32).
_TRITON_MAX_NUMEL = 2**31 - 1


def _int8_offset(bits: int, qmin: int) -> int | None:
    """Constant ``c`` with ``q - c`` in int8 for every code, or ``None`` for "centre on ``z``"
    (codes of <= 7 bits: ``|q - z| <= 127``)."""
    if bits <= 7:
        return None
    return qmin + 128


class RuntimeLayer(nn.Module):
    """An exported quantized Conv2d/Linear running on integer weights."""

    def __init__(self, layer: QuantLayer, arithmetic: str, kernel: str = "torch") -> None:
        super().__init__()
        if arithmetic not in ARITHMETICS:
            raise ValueError(f"unknown arithmetic {arithmetic!r}; expected one of {ARITHMETICS}")
        if kernel not in KERNELS:
            raise ValueError(f"unknown int8 kernel {kernel!r}; expected one of {KERNELS}")
        if not layer.integer:
            raise ValueError(f"{layer.name}: runtime layers are built from an exported (integer) layer")
        wq = layer.w_quant
        self.name = layer.name
        self.kind = "Conv2d" if isinstance(layer, QuantConv2d) else "Linear"
        self.weight_shape = tuple(layer.weight_shape)
        self.w_bits, self.w_qmin = wq.bits, wq.qmin
        self.a_quant: TimestepActQuantizer = layer.a_quant
        self.conv = dataclasses.asdict(layer.op) if self.kind == "Conv2d" else None
        self.note = ""
        s, z = wq.effective()
        self.register_buffer("w_scale", s.detach().float().reshape(-1).clone())
        self.register_buffer("w_zero", z.detach().reshape(-1).round().to(torch.int32))
        bias = layer.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        codes = layer.qweight.to(torch.int16)
        if self.w_bits <= 4:
            self.packing = "int4x2"
            self.register_buffer("qweight", pack_int4(codes - self.w_qmin))
        else:
            self.packing = "int8"
            off = _int8_offset(self.w_bits, self.w_qmin) or 0
            self.register_buffer("qweight", (codes - off).to(torch.int8))
            self._w_off = off
        self.register_buffer("gemm_weight", None, persistent=False)
        self.register_buffer("float_weight", None, persistent=False)
        self._requested_kernel = kernel
        self.set_arithmetic(arithmetic)

    def set_arithmetic(self, arithmetic: str) -> None:
        """Switch what this layer computes, building the weight copy that arithmetic needs (the
        int8 GEMM layout, or the weight dequantized once) and dropping the other, so that a
        layer never holds both. The load-time per-layer choice (:mod:`.selection`) uses it."""
        if arithmetic not in ARITHMETICS:
            raise ValueError(f"unknown arithmetic {arithmetic!r}; expected one of {ARITHMETICS}")
        self.arithmetic = arithmetic
        if arithmetic == "int8" and self.conv is not None and (
            self.conv["groups"] != 1 or any(d != 1 for d in self.conv["dilation"])
        ):
            self.arithmetic = "fake"
            self.note = "no int8 kernel for grouped/dilated conv: fake-quant float"
        self.kernel = self._requested_kernel if self.arithmetic == "int8" else ""
        self.__dict__["_onednn_weight"] = None
        if self.kernel == "onednn":
            self._centre_onednn_weight()
        device = self.qweight.device
        self.gemm_weight = None
        self.float_weight = None
        gemm = self._layout_gemm_weight()
        self.gemm_weight = None if gemm is None else gemm.to(device)
        if self.arithmetic == "dequantized":
            self.float_weight = self.dequantized_weight(torch.float32)

    def _layout_gemm_weight(self) -> Tensor | None:
        """8-bit codes on the ``torch`` kernel: the GEMM's ``[N(+1), K]`` int8 weight, built once
        here instead of re-laid out every call; with ``dw``, one extra row of ones so that the
        same GEMM also yields ``rowsum(A)`` (no second pass over the activations). 1 byte per
        weight, counted in :attr:`weight_bytes`; 4-bit codes get no copy (they stay packed)."""
        if self.arithmetic not in ("int8", "emulated") or self.kernel in ("triton", "onednn") or self.packing != "int8":
            return None
        w, dw = self.int8_weight()
        if dw is not None:
            w = torch.cat([w, torch.ones(1, w.shape[1], dtype=w.dtype)])
        return w.contiguous()

    def kernel_name(self) -> str:
        """What computes this layer's integer product (for the runtime report)."""
        if self.arithmetic != "int8":
            return ""
        if self.kernel == "torch":
            k = self.weight_shape[2:] if self.conv is not None else ()
            return "torch._int_mm" + (" (im2col)" if k and k != (1, 1) else "")
        shape = "x".join(map(str, self.weight_shape[2:])) if self.conv is not None else ""
        if self.kernel == "onednn":
            return f"onednn qconv {shape} s{self.conv['stride'][0]}" if self.conv is not None else "onednn qlinear"
        name = f"triton igemm {shape} s{self.conv['stride'][0]}" if self.conv is not None else "triton gemm"
        return name + (", int4 unpacked in kernel" if self.packing == "int4x2" else "")

    # -- weights --------------------------------------------------------------------------------
    @property
    def weight_bytes(self) -> int:
        """Bytes of the weight as held in memory (codes + scales + zero points + the GEMM layout;
        oneDNN's prepacked copies, one per input shape seen, at 1 byte per weight, padding not seen)."""
        onednn = len(self.__dict__.get("_onednn_weight") or ()) * math.prod(self.weight_shape)
        return (storage_bytes(self.qweight) + storage_bytes(self.w_scale) + storage_bytes(self.w_zero)
                + storage_bytes(self.gemm_weight) + storage_bytes(self.float_weight) + onednn)

    @property
    def packed_bytes(self) -> int:
        """Bytes of the stored codes, scales and zero points alone (what ``weight_only`` holds)."""
        return storage_bytes(self.qweight) + storage_bytes(self.w_scale) + storage_bytes(self.w_zero)

    def codes(self) -> Tensor:
        """Integer weight codes ``[N, ...]`` (int16)."""
        n = 1
        for d in self.weight_shape:
            n *= d
        if self.packing == "int4x2":
            return (unpack_int4(self.qweight, n).to(torch.int16) + self.w_qmin).view(self.weight_shape)
        return (self.qweight.to(torch.int16) + self._w_off).view(self.weight_shape)

    def int8_weight(self) -> tuple[Tensor, Tensor | None]:
        """``(W [N, K] int8, dw [N] int32 or None)`` with ``q_w - z_w = W + dw``; for a conv, ``K``
        runs over ``(i, j, c)`` (the channels-last im2col order)."""
        n_out = self.weight_shape[0]
        if self.packing == "int8" and _int8_offset(self.w_bits, self.w_qmin) is not None:
            w, dw = self.qweight.view(self.weight_shape), self.int8_weight_offset()
        else:
            w = (self.codes() - self.w_zero.view((-1,) + (1,) * (len(self.weight_shape) - 1)).to(torch.int16))
            w, dw = w.to(torch.int8), None
        if self.conv is not None:
            w = w.permute(0, 2, 3, 1)
        return w.reshape(n_out, -1), dw

    def int8_weight_offset(self) -> Tensor | None:
        """``dw`` of :meth:`int8_weight` (8-bit codes shifted into int8), else ``None``."""
        if self.packing == "int8" and _int8_offset(self.w_bits, self.w_qmin) is not None:
            return (self._w_off - self.w_zero).to(torch.int32)
        return None

    def _column_sums(self, w: Tensor) -> Tensor:
        """``W.sum(1)`` (int32), fixed per layer: computed once (per device), not per call."""
        cached = self.__dict__.get("_colsum")
        if cached is None or cached.device != w.device:
            cached = self.__dict__["_colsum"] = w.to(torch.int32).sum(1)
        return cached

    def dequantized_weight(self, dtype: torch.dtype) -> Tensor:
        view = (-1,) + (1,) * (len(self.weight_shape) - 1)
        return dequantize(self.codes(), self.w_scale.view(view), self.w_zero.view(view)).to(dtype)

    # -- activations ----------------------------------------------------------------------------
    def _act_tables(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(step, zero point, qmin - z, qmax - z)`` per bucket, fp32: the student's tables,
        fixed in a runtime, so computed once per device instead of per call (on small layers
        the per-call table arithmetic was a visible part of the call)."""
        cached = self.__dict__.get("_act_cache")
        if cached is None or cached[0].device != device:
            s, z = self.a_quant.effective()
            s, z = s.detach().float().to(device), z.detach().float().to(device)
            cached = self.__dict__["_act_cache"] = (s, z, self.a_quant.qmin - z, self.a_quant.qmax - z)
        return cached

    def _act_params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``(step, integer zero point)`` ``[B']`` (``B'`` = 1 or the batch), fp32."""
        idx, _ = self.a_quant.bucket_for(x)
        s, z, _, _ = self._act_tables(x.device)
        return s[idx], z[idx]

    def _act_codes(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(A int8, s [B'], da [B'] int32 or None)`` with ``q_x - z_x = A + da``; for a conv,
        ``A`` is channels last ``[B, H, W, C]``.

        ``q_x - z_x = clamp(round(x / s), qmin - z, qmax - z)``: the same integers as
        ``clamp(round(x / s) + z, qmin, qmax) - z`` (the student's codes), in fewer passes."""
        idx, _ = self.a_quant.bucket_for(x)
        s_all, z_all, lo, hi = self._act_tables(x.device)
        s, z = s_all[idx], z_all[idx]
        if self.conv is not None:
            x = x.permute(0, 2, 3, 1)
        view = (-1,) + (1,) * (x.ndim - 1)
        aq = self.a_quant
        centred = torch.div(x.float(), s.view(view)).round_().clamp_(lo[idx].view(view), hi[idx].view(view))
        off = _int8_offset(aq.bits, aq.qmin)
        if off is None:
            return centred.to(torch.int8).contiguous(), s, None
        da = (off - z).view(view)
        return centred.sub_(da).to(torch.int8).contiguous(), s, da.reshape(-1).to(torch.int32)

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self._use_triton(x):
            return self._triton(x, raw=False)
        if self.kernel == "onednn":
            return self._onednn(x, raw=False).to(x.dtype)
        if self.arithmetic in ("int8", "emulated"):
            return self._forward_int(x)
        if self.arithmetic == "dequantized":
            return self._forward_dequantized(x)
        if self.arithmetic == "weight_only":
            w = self.dequantized_weight(x.dtype)
            return self._float_op(x, w, None if self.bias is None else self.bias.to(x.dtype))
        return self._forward_fake(x)

    def _float_op(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if self.conv is None:
            return F.linear(x, w, b)
        c = self.conv
        return F.conv2d(x, w, b, c["stride"], c["padding"], c["dilation"], c["groups"])

    def _forward_dequantized(self, x: Tensor) -> Tensor:
        """The student's float computation with the weight dequantized once: the input
        fake-quantized with the bucket's step (``clamp(round(x/s), qmin - z, qmax - z) * s``, the
        same values as dequantizing the student's codes), so that a layer the CPU runs in float
        computes what the int8 path computes, up to fp32 summation order."""
        idx, _ = self.a_quant.bucket_for(x)
        s, _, lo, hi = self._act_tables(x.device)
        view = (-1,) + (1,) * (x.ndim - 1)
        sv = s[idx].view(view)
        xq = torch.div(x.float(), sv).round_().clamp_(lo[idx].view(view), hi[idx].view(view)).mul_(sv)
        y = self._float_op(xq, self.float_weight, self.bias)
        return y.to(x.dtype)

    def _forward_fake(self, x: Tensor) -> Tensor:
        s, z = self._act_params(x)
        view = (-1,) + (1,) * (x.ndim - 1)
        aq = self.a_quant
        xq = dequantize(quantize_codes(x, s.view(view), z.view(view), aq.qmin, aq.qmax), s.view(view), z.view(view))
        y = self._float_op(xq, self.dequantized_weight(torch.float32), self.bias)
        return y.to(x.dtype)

    # -- Triton kernels -------------------------------------------------------------------------
    def _use_triton(self, x: Tensor) -> bool:
        """The Triton kernel runs this call (a call larger than its int32 offsets, input or output
        with up to 2x the input's pixels, uses ``torch``)."""
        out_bound = x.numel() // self.weight_shape[1] * self.weight_shape[0] * 2
        return self.kernel == "triton" and max(x.numel(), out_bound) <= _TRITON_MAX_NUMEL

    def _triton_constants(self, device: torch.device) -> tuple[Tensor, Tensor, bool]:
        """``(dw, col, centre)`` for the kernel, which reads the stored codes ``W'``:
        ``q_w - z_w = W' + dw`` and ``col = colsum(W') + K dw`` (``[N]`` int32); ``centre``: every
        ``W' + dw`` fits int8 (always for 4-bit codes), so the kernel centres the weight tile
        itself. Fixed per layer: once per device."""
        cached = self.__dict__.get("_triton_consts")
        if cached is None or cached[0].device != device:
            stored_offset = self.w_qmin if self.packing == "int4x2" else self._w_off
            dw = (stored_offset - self.w_zero).to(torch.int32)
            stored = (self.codes().to(torch.int32) - stored_offset).reshape(dw.shape[0], -1)
            col = stored.sum(1, dtype=torch.int32) + stored.shape[1] * dw
            centred = stored + dw.view(-1, 1)
            centre = bool(centred.min() >= -128 and centred.max() <= 127)
            cached = self.__dict__["_triton_consts"] = (dw.to(device), col.to(torch.int32).to(device), centre)
        return cached

    def _triton(self, x: Tensor, raw: bool) -> Tensor:
        """The layer (or, ``raw``, its int32 accumulator, channels last) by the Triton kernel."""
        from .triton_conv import conv2d_int8
        from .triton_gemm import linear_int8

        a, s, da = self._act_codes(x)
        b = x.shape[0]
        dw, col, centre = self._triton_constants(x.device)
        kw = {"int4_packed": self.packing == "int4x2", "centre_weight": centre, "dw": dw, "col": col,
              "da": None if da is None else da.expand(b), "sx": s.float().expand(b), "sw": self.w_scale,
              "bias": self.bias, "raw": raw,
              "out_dtype": torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32}
        if self.conv is None:
            y = linear_int8(a, self.qweight, self.weight_shape, **kw)
        else:
            c = self.conv
            y = conv2d_int8(a, self.qweight, self.weight_shape, stride=tuple(c["stride"]),
                            padding=tuple(c["padding"]), **kw).permute(0, 3, 1, 2)
        return y if raw else y.to(x.dtype)

    # -- oneDNN kernels (x86 CPUs) ------------------------------------------------------------------
    def _centre_onednn_weight(self) -> None:
        """The centring of the weight for oneDNN: ``W' = q_w - c`` in int8 with ``c`` per output
        channel the zero point where ``q_w - z_w`` fits int8 (always for <= 7-bit codes), else the
        nearest centre that fits; ``dw = c - z_w`` (``None`` when all 0). oneDNN takes symmetric
        int8 weights only (it ignores weight zero points), so ``dw * sum(q_x - z_x)`` over the
        receptive field is added after its call (:meth:`_onednn_bucket`). ``W'`` is prepacked per
        input shape at its first call (:meth:`_onednn_packed`)."""
        flat = self.codes().to(torch.int32).reshape(self.weight_shape[0], -1)
        centre = torch.minimum(torch.maximum(self.w_zero.cpu(), flat.amax(1) - 127), flat.amin(1) + 128)
        dw = (centre - self.w_zero.cpu()).to(torch.int32)
        self.__dict__["_onednn_centre"] = centre
        self.__dict__["_onednn_dw"] = dw if bool(dw.any()) else None
        self.__dict__["_onednn_weight"] = {}
        self.__dict__["_onednn_tap_sums"] = {}

    def _onednn_centred(self) -> Tensor:
        """``W' = q_w - c`` (int8, the weight's shape), from the stored codes."""
        centre = self.__dict__["_onednn_centre"]
        w = self.codes().to(torch.int32).reshape(centre.shape[0], -1) - centre.view(-1, 1)
        return w.to(torch.int8).reshape(self.weight_shape)

    def _onednn_packed(self, shape: torch.Size) -> Tensor:
        """``W'`` in oneDNN's layout for inputs of ``shape``, once per shape: packed for another
        input shape, oneDNN reorders the weight on every call (measured: 1.1 s per call for a
        672x1568x3x3 weight packed without a shape)."""
        from .onednn import prepack_conv, prepack_linear

        packed = self.__dict__["_onednn_weight"]
        key = tuple(shape)
        if key not in packed:
            c = self.conv
            w = self._onednn_centred()
            packed[key] = (prepack_linear(w, key) if c is None
                           else prepack_conv(w, tuple(c["stride"]), tuple(c["padding"]), key))
        return packed[key]

    def _onednn(self, x: Tensor, raw: bool) -> Tensor:
        """The layer by oneDNN (fp32; ``raw``: the exact accumulator, float64), one call per
        activation bucket present in the batch (sampling: one)."""
        idx, _ = self.a_quant.bucket_for(x)
        if idx.numel() == 1 or bool((idx == idx[0]).all()):
            return self._onednn_bucket(x, int(idx.reshape(-1)[0]), raw)
        out = None
        for b in torch.unique(idx).tolist():
            rows = torch.nonzero(idx == b).flatten()
            y = self._onednn_bucket(x[rows], int(b), raw)
            out = y.new_empty((x.shape[0],) + y.shape[1:]) if out is None else out
            out[rows] = y
        return out

    def _onednn_bucket(self, x: Tensor, bucket: int, raw: bool) -> Tensor:
        """``acc = sum q'_x W'`` by oneDNN with the codes ``q'_x = q_x - qmin`` (uint8) and zero
        point 0 (oneDNN's own activation zero point adds a weight-compensation reorder to every call,
        seen with ``ONEDNN_VERBOSE=1``), then
        ``acc - z'_x M + dw R`` (``z'_x = z_x - qmin``; ``M``: the sum of ``W'`` over the taps that
        fall inside the input, per output position, fixed per input size; ``R``: the window sums
        of ``q_x - z_x``) in the epilogue's scale: ``sum (q_x - z_x)(q_w - z_w)``, exactly."""
        from .onednn import conv2d, linear

        s_all, z_all, lo, hi = self._act_tables(x.device)
        qmin = self.a_quant.qmin
        codes = torch.div(x.float(), s_all[bucket]).round_().clamp_(lo[bucket], hi[bucket])
        codes = codes.add_(z_all[bucket] - qmin)  # q_x - qmin in [0, qmax - qmin]
        x_zero = int(z_all[bucket]) - qmin
        x_scale = 1.0 if raw else float(s_all[bucket])
        w_scale = torch.ones_like(self.w_scale) if raw else self.w_scale
        bias = None if raw else self.bias
        packed = self._onednn_packed(codes.shape)
        if self.conv is None:
            y = linear(codes.to(torch.uint8), x_scale, 0, packed, w_scale, bias)
        else:
            c = self.conv
            qx = codes.to(torch.uint8, memory_format=torch.channels_last)
            y = conv2d(qx, x_scale, 0, packed, w_scale, bias, tuple(c["stride"]), tuple(c["padding"]))
        dtype = torch.float64 if raw else torch.float32
        y = y.to(dtype)
        view = (1, -1, 1, 1) if self.conv is not None else (-1,)
        scale = (torch.ones_like(self.w_scale, dtype=dtype) if raw else x_scale * self.w_scale).view(view)
        if x_zero:
            y.addcmul_(self._tap_sums(codes.shape, dtype), scale, value=-x_zero)
        dw = self.__dict__["_onednn_dw"]
        if dw is not None:
            y.addcmul_(self._window_sums(codes, x_zero, dtype), scale * dw.to(dtype).view(view))
        return y

    def _tap_sums(self, shape: torch.Size, dtype: torch.dtype) -> Tensor:
        """``M``: per output channel (and position, for a conv: borders see fewer taps) the sum of
        the int8 weight ``W'`` over the taps inside the input; cached per input size."""
        key = (tuple(shape[2:]) if self.conv is not None else (), dtype)
        cache = self.__dict__["_onednn_tap_sums"]
        if key not in cache:
            w = self._onednn_centred().to(torch.float64)
            if self.conv is None:
                m = w.sum(1)
            else:
                c = self.conv
                ones = torch.ones((1, w.shape[1]) + tuple(shape[2:]), dtype=torch.float64)
                m = F.conv2d(ones, w, None, c["stride"], c["padding"]).contiguous(memory_format=torch.channels_last)
            cache[key] = m.to(dtype)
        return cache[key]

    def _window_sums(self, codes: Tensor, x_zero: int, dtype: torch.dtype) -> Tensor:
        """``R = sum (q_x - z_x)`` over each output's receptive field (all input channels): ``[B, 1,
        Ho, Wo]`` for a conv (padding contributes 0), ``[..., 1]`` for a linear. Integers: summed
        in fp32 while ``255 K < 2^24`` (``K`` per output), else in float64."""
        k = codes.shape[-1] if self.conv is None else codes.shape[1] * math.prod(self.weight_shape[2:])
        work = torch.float64 if dtype == torch.float64 or 255 * k >= 2**24 else torch.float32
        if self.conv is None:
            return codes.to(work).sum(-1, keepdim=True).sub_(k * x_zero).to(dtype)
        c = self.conv
        per_pixel = codes.to(work).sum(1, keepdim=True).sub_(codes.shape[1] * x_zero)
        kernel = tuple(self.weight_shape[2:])
        if all(2 * p <= k for p, k in zip(c["padding"], kernel)):  # what avg_pool2d pads
            window = F.avg_pool2d(per_pixel, kernel, tuple(c["stride"]), tuple(c["padding"]),
                                  count_include_pad=True, divisor_override=1)
        else:
            ones = torch.ones((1, 1) + kernel, dtype=work)
            window = F.conv2d(per_pixel, ones, None, c["stride"], c["padding"])
        return window.to(dtype)

    def int_accumulate(self, x: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...]]:
        """The exact integer part: ``acc [M, N]`` int32 = ``sum_k (q_x - z_x)(q_w - z_w)``, the
        per-row activation step ``[M]`` and the output layout ``(B, Ho, Wo)`` or ``x.shape[:-1]``.
        (oneDNN writes the accumulator as fp32: exact while ``|acc| < 2^24``.)"""
        if self._use_triton(x) or self.kernel == "onednn":
            acc = self._triton(x, raw=True) if self.kernel == "triton" else self._onednn(x, raw=True).to(torch.int32)
            if self.conv is not None:
                acc = acc.permute(0, 2, 3, 1)
            lead = tuple(acc.shape[:-1])
            acc = acc.reshape(-1, acc.shape[-1])
            s, _ = self._act_params(x)
            return acc, s.expand(x.shape[0]).repeat_interleave(acc.shape[0] // x.shape[0]), lead
        a, s, da = self._act_codes(x)
        w, dw = self._gemm_weight(x.device)
        n = self.weight_shape[0]
        b = x.shape[0]
        if self.conv is None:
            lead = tuple(x.shape[:-1])
            a2 = a.reshape(-1, a.shape[-1])
        else:
            c = self.conv
            pad = None if da is None else (-da).expand(b)
            a2, ho, wo = im2col_nhwc(a, self.weight_shape[2:], c["stride"], c["padding"], pad)
            lead = (b, ho, wo)
        rows = a2.shape[0] // b
        gemm = int8_gemm if self.arithmetic == "int8" else emulated_gemm
        acc = gemm(a2, w)
        if dw is not None:  # the last output column is rowsum(A) (the weight's ones row)
            acc = acc[:, :n] + acc[:, n:] * dw.view(1, -1)
        if da is not None:  # per sample, broadcast over its rows (no per-row copy of da)
            col = self._column_sums(w[:n]) + (0 if dw is None else w.shape[1] * dw)
            acc.view(b, rows, n).add_((da.view(-1, 1) * col.view(1, -1)).unsqueeze(1))
        return acc, s.expand(b).repeat_interleave(rows), lead

    def _gemm_weight(self, device: torch.device) -> tuple[Tensor, Tensor | None]:
        """``(W, dw)`` for ``torch._int_mm``: the copy laid out at load time (8-bit codes), else
        :meth:`int8_weight` (4-bit codes: unpacked per call, so that they stay packed in memory)."""
        if self.gemm_weight is not None:
            return self.gemm_weight, self.int8_weight_offset()
        return self.int8_weight()

    def _forward_int(self, x: Tensor) -> Tensor:
        acc, s_rows, lead = self.int_accumulate(x)
        b = lead[0]
        acc = acc.view(b, -1, acc.shape[-1])
        # per sample: scale [B', 1, N] = s_x * s_w; one fused pass y = bias + acc * scale
        scale = s_rows.view(b, -1)[:, :1, None] * self.w_scale.view(1, 1, -1)
        if self.bias is not None:
            y = torch.addcmul(self.bias.view(1, 1, -1), acc.float(), scale)
        else:
            y = acc.float().mul_(scale)
        y = y.view(*lead, -1)
        if self.conv is not None:
            y = y.permute(0, 3, 1, 2).contiguous()
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        kernel = f", {self.kernel}" if self.kernel else ""
        return f"{self.kind} w{self.w_bits}a{self.a_quant.bits}, {self.packing}, {self.arithmetic}{kernel}"
