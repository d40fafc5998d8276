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


def assert_same_codes_until_the_first_flip(got_in: dict, want_in: dict, got: Tensor, want: Tensor) -> None:
    """Two runtimes computing the same integers with float ops in another order: until the first
    flipped activation code every layer input agrees to 1e-5 of its range, that flip is by one
    code, and the outputs agree to 5% of their range (a flip cascades; measured 1.5%)."""
    assert list(got_in) == list(want_in)  # same layers, same call order
    for name, (x_w, codes_w) in want_in.items():
        x_g, codes_g = got_in[name]
        d = (codes_g - codes_w).abs()
        if d.max() > 0:
            assert d.max() == 1, (name, d.max())
            break
        torch.testing.assert_close(x_g, x_w, rtol=0, atol=1e-5 * x_w.abs().max().item(), msg=name)
    torch.testing.assert_close(got, want, rtol=0, atol=0.05 * want.abs().max().item())
