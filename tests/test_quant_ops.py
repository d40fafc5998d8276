"""The quantized layer's pieces, each with its own gradient, and quantized_op that composes them:
merge_lora (gradcheck), fake_quantize keeping its intermediates (same values and gradients),
adaround_quantize (its formula's gradients), and quantized_op (gradcheck
against the plain chain, and it keeps only the pieces' inputs for backward)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from saq_lightning.quant.functional import fake_quantize
from saq_lightning.quant.ops import Conv2dOp, LinearOp, Quantized, merge_lora, quantized_op
from saq_lightning.quant.rounding import adaround_quantize

D = torch.double


@pytest.mark.parametrize("shape", [(6, 3, 3, 3), (5, 7)])
def test_merge_lora_passes_gradcheck(shape):
    W = torch.randn(shape, dtype=D, requires_grad=True)
    A = torch.randn((2,) + shape[1:], dtype=D, requires_grad=True)
    B = torch.randn(shape[0], 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda W, A, B: merge_lora(W, A, B, 0.5), (W, A, B))
    assert merge_lora(W, None, None, 0.5) is W


def test_fake_quantize_keeping_intermediates_gives_the_same_values_and_gradients():
    x = (torch.randn(3, 4, 5) * 3).requires_grad_()
    s = torch.tensor([0.2, 0.3, 0.25]).view(3, 1, 1).requires_grad_()
    z = torch.tensor([7.0, 8.0, 6.0]).view(3, 1, 1).requires_grad_()
    up = torch.linspace(-1, 1, x.numel()).view_as(x)
    results = []
    for keep in (False, True):
        y = fake_quantize(x, s, z, 0, 15, 0.1, keep)
        results.append((y.detach(), torch.autograd.grad((y * up).sum(), (x, s, z))))
    (y0, g0), (y1, g1) = results
    assert torch.equal(y0, y1)
    for a, b in zip(g0, g1):
        assert torch.equal(a, b)


def test_adaround_quantize_values_and_gradients_follow_the_formula():
    """fp32 like every quantizer; expected gradients written out (exact): dy/dh = s and dy/dw = 1
    inside the code range (floor straight-through), both 0 where the code is clamped."""
    torch.manual_seed(0)
    w, s, z = torch.randn(4, 6) * 0.5, torch.full((4, 1), 0.1), torch.full((4, 1), 8.0)
    h = torch.rand(4, 6)
    wg, hg = w.clone().requires_grad_(), h.clone().requires_grad_()
    y = adaround_quantize(wg, s, z, hg, 0, 15)
    y.sum().backward()
    code = torch.floor(w / s) + h + z
    inside = ((code >= 0) & (code <= 15)).float()
    assert 0 < inside.sum() < inside.numel()  # both cases occur
    assert torch.equal(y.detach(), (torch.clamp(code, 0, 15) - z) * s)
    assert torch.equal(wg.grad, inside)
    assert torch.equal(hg.grad, inside * s)


def _smooth_pieces(x, W, A, B, a, b):
    """Differentiable stand-ins for the quantizers (a real fake-quantizer is piecewise constant)."""
    xq = Quantized(lambda x, a: x * a, (x, a))
    wq = Quantized(lambda W, A, B, b: merge_lora(W, A, B, 0.5) * b, (W, A, B, b))
    return xq, wq


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_quantized_op_passes_gradcheck_and_equals_the_plain_chain(kind):
    torch.manual_seed(0)
    if kind == "conv":
        op, xs, ws = Conv2dOp((2, 2), (1, 1), (1, 1), 1), (2, 3, 5, 5), (4, 3, 3, 3)
        a_shape = (2, 1, 1, 1)
    else:
        op, xs, ws = LinearOp(), (2, 3, 5), (4, 5)
        a_shape = (2, 1, 1)
    x = torch.randn(xs, dtype=D, requires_grad=True)
    W = torch.randn(ws, dtype=D, requires_grad=True)
    A = torch.randn((2,) + ws[1:], dtype=D, requires_grad=True)
    B = torch.randn(ws[0], 2, dtype=D, requires_grad=True)
    a = torch.rand(a_shape, dtype=D).add(0.5).requires_grad_()
    b = torch.rand((ws[0],) + (1,) * (len(ws) - 1), dtype=D).add(0.5).requires_grad_()
    bias = torch.randn(ws[0], dtype=D, requires_grad=True)
    inputs = (x, W, A, B, a, b, bias)

    def composed(x, W, A, B, a, b, bias):
        xq, wq = _smooth_pieces(x, W, A, B, a, b)
        return quantized_op(op, xq, wq, bias, D)

    def plain(x, W, A, B, a, b, bias):
        xq, wq = _smooth_pieces(x, W, A, B, a, b)
        return op(xq.fn(*xq.tensors), wq.fn(*wq.tensors), bias)

    assert torch.autograd.gradcheck(composed, inputs)  # tolerances: gradcheck's defaults
    up = torch.randn_like(plain(*inputs))
    g1 = torch.autograd.grad((composed(*inputs) * up).sum(), inputs)
    g2 = torch.autograd.grad((plain(*inputs) * up).sum(), inputs)
    torch.testing.assert_close(composed(*inputs), plain(*inputs), rtol=0, atol=0)
    for p, q in zip(g1, g2):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_quantized_op_keeps_only_the_pieces_inputs_for_backward():
    base = nn.Conv2d(4, 8, 3, padding=1).requires_grad_(False)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    A = torch.randn(2, 4, 3, 3, requires_grad=True)
    B = torch.randn(8, 2, requires_grad=True)
    s, z = torch.full((2, 1, 1, 1), 0.05, requires_grad=True), torch.full((2, 1, 1, 1), 100.0)
    ws, wz = torch.full((8, 1, 1, 1), 0.02, requires_grad=True), torch.full((8, 1, 1, 1), 7.0)
    fq = partial(fake_quantize, grad_factor=1.0)
    xq = Quantized(lambda x, s, z: fq(x, s, z, 0, 255), (x, s, z))
    wq = Quantized(lambda W, A, B, s, z: fq(merge_lora(W, A, B, 1.0), s, z, 0, 15), (base.weight, A, B, ws, wz))
    inputs = {t.data_ptr() for t in (x, base.weight, A, B, s, z, ws, wz, base.bias)}
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = quantized_op(Conv2dOp((1, 1), (1, 1), (1, 1), 1), xq, wq, base.bias, torch.float32)
    assert saved and all(t.data_ptr() in inputs for t in saved)  # no merged weight, no fq(x), no fq(w)
    y.sum().backward()
    assert all(t.grad is not None for t in (x, A, B, s, ws))
