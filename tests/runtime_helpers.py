"""Helpers of tests/test_quant_runtime*.py: capture every quantized layer's input and codes."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from saq_lightning.quant import QuantLayer
from saq_lightning.quant.functional import quantize_codes
from saq_lightning.quant.runtime import RuntimeLayer


def _codes(layer: nn.Module, x: Tensor) -> Tensor:
    aq = layer.a_quant
    idx, _ = aq.bucket_for(x)
    s, z = aq.effective()
    view = (-1,) + (1,) * (x.ndim - 1)
    return quantize_codes(x, s.detach()[idx].view(view), z.detach()[idx].view(view), aq.qmin, aq.qmax)


@contextmanager
def capture_inputs(model: nn.Module):
    """``{layer name: (input, activation codes)}`` of every quantized/runtime layer during the block."""
    seen: dict[str, tuple[Tensor, Tensor]] = {}
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, (QuantLayer, RuntimeLayer)):
            def hook(mod, args, name=name):
                seen[name] = (args[0].detach().clone(), _codes(mod, args[0]))
            handles.append(m.register_forward_pre_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def layers_of(model: nn.Module, kind: type) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, kind)}


@torch.no_grad()
def reference_accumulator(layer: RuntimeLayer, x: Tensor) -> Tensor:
    """``sum_k (q_x - z_x)(q_w - z_w)`` computed in float64 from the codes (exact), shaped like
    :meth:`RuntimeLayer.int_accumulate`'s ``acc``."""
    aq = layer.a_quant
    idx, _ = aq.bucket_for(x)
    _, z = aq.effective()
    view = (-1,) + (1,) * (x.ndim - 1)
    xc = (_codes(layer, x) - z.detach()[idx].view(view)).double()
    wview = (-1,) + (1,) * (len(layer.weight_shape) - 1)
    wc = (layer.codes().double() - layer.w_zero.view(wview).double())
    if layer.conv is None:
        return torch.nn.functional.linear(xc, wc).reshape(-1, wc.shape[0])
    c = layer.conv
    y = torch.nn.functional.conv2d(xc, wc, None, c["stride"], c["padding"], c["dilation"], c["groups"])
    return y.permute(0, 2, 3, 1).reshape(-1, wc.shape[0])
