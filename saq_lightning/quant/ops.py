"""``op(quantize_x(x), quantize_w(w))`` for a conv/linear, recomputing the quantized inputs in backward.

The quantizer pieces are plain differentiable functions (:func:`~.functional.fake_quantize`,
:func:`merge_lora`, :func:`~.rounding.adaround_quantize`), each with its own gradient. Chained
with plain autograd, ``conv(fq(x), fq(W + s B A))`` would keep, per layer, ``fq(x)`` (an extra
activation-sized tensor) and the merged and the quantized weight (two weight-sized tensors) until
backward. :func:`quantized_op` keeps only the pieces' inputs (``x``, which the FP layer keeps too,
the frozen weight, the small LoRA factors and quantizer parameters) and re-runs the pieces in
backward (elementwise passes and one rank-r matmul), never the conv/matmul itself: the op's
backward is explicit (:class:`Conv2dOp`, :class:`LinearOp`).

Inside, autocast is off and dtypes are explicit: the pieces compute in fp32, the op runs in
``compute_dtype`` (the autocast dtype inside an autocast region, else the layer's weight dtype),
as autocast would do for the plain layer.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


def lora_delta(weight: Tensor, lora_a: Tensor | None, lora_b: Tensor | None, scaling: float) -> Tensor | None:
    """``scaling * B @ A`` shaped like ``weight``, at least fp32 (``None`` without LoRA)."""
    if lora_a is None:
        return None
    dt = torch.promote_types(weight.dtype, torch.float32)
    return (lora_b.to(dt) * scaling).matmul(lora_a.to(dt).flatten(1)).view(weight.shape)


def merge_lora(weight: Tensor, lora_a: Tensor | None, lora_b: Tensor | None, scaling: float) -> Tensor:
    """``W + scaling * B @ A`` (at least fp32 if LoRA is present; ``W`` itself otherwise)."""
    delta = lora_delta(weight, lora_a, lora_b, scaling)
    if delta is None:
        return weight
    return weight.to(delta.dtype) + delta


class Quantized(NamedTuple):
    """``fn(*tensors)``: a quantizer piece and the tensors it is computed from (``None`` allowed).
    ``fn`` must depend on nothing else that needs a gradient."""

    fn: Callable[..., Tensor]
    tensors: tuple[Tensor | None, ...]


def identity(x: Tensor) -> Tensor:
    return x


@dataclass(frozen=True)
class LinearOp:
    def __call__(self, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, w, bias)

    def backward(self, g: Tensor, x: Tensor, w: Tensor, needs: tuple[bool, bool, bool]):
        g2 = g.reshape(-1, g.shape[-1])
        gx = g2.matmul(w).view(x.shape) if needs[0] else None
        gw = g2.t().matmul(x.reshape(-1, x.shape[-1])) if needs[1] else None
        return gx, gw, (g2.sum(0) if needs[2] else None)


@dataclass(frozen=True)
class Conv2dOp:
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int

    def __call__(self, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, w, bias, self.stride, self.padding, self.dilation, self.groups)

    def backward(self, g: Tensor, x: Tensor, w: Tensor, needs: tuple[bool, bool, bool]):
        return torch.ops.aten.convolution_backward(
            g, x, w, [w.shape[0]] if needs[2] else None, list(self.stride), list(self.padding),
            list(self.dilation), False, [0, 0], self.groups, list(needs),
        )


def _no_autocast(device_type: str):
    return torch.autocast(device_type, enabled=False) if torch.is_autocast_enabled(device_type) else nullcontext()


class _QuantizedOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, cdt, x_fn, w_fn, n_x: int, bias, *tensors):  # type: ignore[override]
        ctx.save_for_backward(bias, *tensors)
        ctx.args = (op, cdt, x_fn, w_fn, n_x)
        with _no_autocast(tensors[0].device.type):
            xq, wq = x_fn(*tensors[:n_x]).to(cdt), w_fn(*tensors[n_x:]).to(cdt)
            return op(xq, wq, None if bias is None else bias.to(cdt))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        op, cdt, x_fn, w_fn, n_x = ctx.args
        bias, *saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[6:]
        leaves = [t.detach().requires_grad_() if n else t for t, n in zip(saved, needs)]
        with _no_autocast(grad.device.type), torch.enable_grad():
            xq, wq = x_fn(*leaves[:n_x]).to(cdt), w_fn(*leaves[n_x:]).to(cdt)
            need = (xq.requires_grad, wq.requires_grad, bias is not None and ctx.needs_input_grad[5])
            gx, gw, gb = op.backward(grad.to(cdt), xq.detach(), wq.detach(), need)
            wanted = [t for t, n in zip(leaves, needs) if n]
            pairs = [(q, g) for q, g in ((xq, gx), (wq, gw)) if g is not None]
            got = iter(torch.autograd.grad([q for q, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True)
                       if wanted and pairs else [None] * len(wanted))
        grads = [next(got) if n else None for n in needs]
        return (None,) * 5 + (None if gb is None else gb.to(bias.dtype), *grads)


def quantized_op(op: LinearOp | Conv2dOp, x: Quantized, w: Quantized, bias: Tensor | None,
                 compute_dtype: torch.dtype) -> Tensor:
    """``op(x.fn(*x.tensors), w.fn(*w.tensors), bias)`` keeping only the tensors for backward."""
    return _QuantizedOp.apply(op, compute_dtype, x.fn, w.fn, len(x.tensors), bias, *x.tensors, *w.tensors)
