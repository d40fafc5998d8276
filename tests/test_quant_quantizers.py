"""Uniform affine fake quantizers: STE / LSQ gradients, initialisation quality, bf16 safety."""

from __future__ import annotations

import math

import pytest
import torch

from saq_lightning.quant import FakeQuantize, WeightQuantizer, qrange
from saq_lightning.quant.functional import fake_quant_forward, quantize_codes
from saq_lightning.quant.ranges import lp_init, minmax_init


def reference_fq(x, s, z, qmin, qmax, grad_factor):
    """Independent derivation with plain autograd (gradients come from autograd, not formulas).

    STE rounding: ``round(v) + (v - v.detach())`` has the value ``round(v)`` and the gradient of
    ``v``; clamped codes are constants; LSQ scaling via ``s * g + (s - s * g).detach()``. The
    range test is on the rounded code, inclusive (as PyTorch's learnable fake-quant kernels).
    """
    s = s * grad_factor + (s - s * grad_factor).detach()
    z = z * grad_factor + (z - z * grad_factor).detach()
    v = x / s
    r = torch.round(v).detach()
    code = r + z.detach()
    inside = (code >= qmin) & (code <= qmax)
    q = torch.where(inside, r + (v - v.detach()) + z, code.clamp(qmin, qmax))
    return (q - z) * s


# -- gradients ------------------------------------------------------------------------------------


def test_gradients_match_hand_derived_values():
    # 4-bit unsigned, s = 0.5, z = 3: x/s = [-4, 0.6, 2.2, 14] -> below range, inside, inside, above
    x = torch.tensor([-2.0, 0.3, 1.1, 7.0], requires_grad=True)
    s = torch.tensor(0.5, requires_grad=True)
    z = torch.tensor(3.0, requires_grad=True)
    y = FakeQuantize.apply(x, s, z, 0, 15, 1.0)
    y.sum().backward()
    assert y.tolist() == [-1.5, 0.5, 1.0, 6.0]
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 0.0]  # straight through inside the range only
    # ds: (qmin - z) + (round(v) - v) + (round(v) - v) + (qmax - z) = -3 + 0.4 - 0.2 + 12
    assert s.grad.item() == pytest.approx(9.2, abs=1e-5)
    # dz: -s for each clamped element, 0 inside
    assert z.grad.item() == pytest.approx(-1.0, abs=1e-6)


def _per_channel_case(bits, symmetric):
    qmin, qmax = qrange(bits, symmetric)
    x = (torch.randn(4, 3, 5, 5) * 2).requires_grad_()
    s = torch.tensor([0.3, 0.2, 0.5, 0.1], requires_grad=True)
    z = torch.zeros(4) if symmetric else (torch.tensor([1.0, 2.0, 0.0, 3.0]) + qmax // 2).clamp(qmin, qmax)
    return x, s, z.requires_grad_(), qmin, qmax, 1.0 / math.sqrt(75 * qmax), torch.randn(4, 3, 5, 5)


CASES = [(2, False), (3, True), (4, False), (4, True), (8, False), (8, True)]


@pytest.mark.parametrize("bits,symmetric", CASES)
def test_gradients_match_reference_autograd_derivation(bits, symmetric):
    x, s, z, qmin, qmax, g, up = _per_channel_case(bits, symmetric)
    s4, z4 = s.view(4, 1, 1, 1), z.view(4, 1, 1, 1)
    grads = torch.autograd.grad((FakeQuantize.apply(x, s4, z4, qmin, qmax, g) * up).sum(), (x, s, z))
    ref = torch.autograd.grad((reference_fq(x, s4, z4, qmin, qmax, g) * up).sum(), (x, s, z))
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not hasattr(torch, "_fake_quantize_learnable_per_channel_affine"), reason="private op")
@pytest.mark.parametrize("bits,symmetric", CASES)
def test_values_and_gradients_match_pytorch_lsq_plus_kernel(bits, symmetric):
    x, s, z, qmin, qmax, g, up = _per_channel_case(bits, symmetric)
    y = FakeQuantize.apply(x, s.view(4, 1, 1, 1), z.view(4, 1, 1, 1), qmin, qmax, g)
    y_ref = torch._fake_quantize_learnable_per_channel_affine(x, s, z, 0, qmin, qmax, g)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-6)
    grads = torch.autograd.grad((y * up).sum(), (x, s, z))
    ref = torch.autograd.grad((y_ref * up).sum(), (x, s, z))
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_step_gradient_equals_finite_difference_where_clamped():
    # every element above the range: y = (qmax - z) * s is linear in s, so FD is exact
    x = torch.full((10,), 100.0)
    z = torch.tensor(2.0)
    s = torch.tensor(0.25, dtype=torch.float32, requires_grad=True)
    FakeQuantize.apply(x, s, z, 0, 15, 1.0).sum().backward()
    eps = 1e-3
    f = lambda step: fake_quant_forward(x, torch.tensor(step), z, 0, 15).sum().item()
    fd = (f(0.25 + eps) - f(0.25 - eps)) / (2 * eps)
    assert s.grad.item() == pytest.approx(fd, rel=1e-4)  # = 10 * (15 - 2) = 130
    assert s.grad.item() == pytest.approx(130.0, rel=1e-6)


def test_lsq_grad_factor_scales_step_and_zero_point_gradients_only():
    x = torch.randn(50).requires_grad_()
    s = torch.tensor(0.1, requires_grad=True)
    z = torch.tensor(7.0, requires_grad=True)
    g1 = torch.autograd.grad(FakeQuantize.apply(x, s, z, 0, 15, 1.0).sum(), (x, s, z))
    g2 = torch.autograd.grad(FakeQuantize.apply(x, s, z, 0, 15, 0.125).sum(), (x, s, z))
    torch.testing.assert_close(g2[0], g1[0], rtol=0, atol=0)
    torch.testing.assert_close(g2[1], g1[1] * 0.125, rtol=1e-6, atol=0)
    torch.testing.assert_close(g2[2], g1[2] * 0.125, rtol=1e-6, atol=0)


# -- ranges and bit widths -------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_code_ranges(bits):
    assert qrange(bits, symmetric=False) == (0, 2**bits - 1)
    assert qrange(bits, symmetric=True) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@pytest.mark.parametrize("bits", [1, 9, 16, 4.0, "4"])
def test_unsupported_bit_width_is_rejected(bits):
    with pytest.raises(ValueError, match="unsupported bit width"):
        WeightQuantizer((4, 4), bits)


def test_codes_stay_inside_the_range_and_dequantize_to_the_fake_quant_value():
    w = torch.randn(8, 32) * 3
    q = WeightQuantizer((8, 32), 4, symmetric=True, init="minmax")
    q.init_from(w * 0.5)  # deliberately too small: many values clamp
    codes = q.codes(w)
    assert codes.min() >= -8 and codes.max() <= 7
    s, z = q.effective()
    torch.testing.assert_close((codes.float() - z) * s, q(w).detach(), rtol=0, atol=0)


# -- initialisation quality ---------------------------------------------------------------------------


def _gaussian_weights(c: int = 64, d: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    sigma = torch.rand(c) * 0.09 + 0.01  # a different scale per output channel
    return torch.randn(c, d) * sigma[:, None], sigma


@pytest.mark.parametrize("bits", [4, 8])
def test_per_channel_minmax_error_matches_uniform_quantizer_theory(bits):
    """Without clipping the error of a uniform quantizer is step^2 / 12 per channel."""
    w, _ = _gaussian_weights()
    q = WeightQuantizer(w.shape, bits, init="minmax")
    q.init_from(w)
    mse = (q(w).detach() - w).pow(2).mean(1)
    theory = q.effective()[0].flatten() ** 2 / 12
    ratio = mse / theory
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.10)
    assert ratio.min().item() > 0.85 and ratio.max().item() < 1.15


def _optimal_uniform_4bit_gaussian_mse() -> float:
    """MSE of the best 16-level uniform quantizer (integer zero point) for N(0, 1), numerically
    (step searched on a 0.0025 grid around the known optimum ~0.34)."""
    bits = 4
    qmin, qmax = qrange(bits, symmetric=False)
    x = torch.linspace(-10, 10, 100_001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
    best = math.inf
    for step in torch.linspace(0.2, 0.5, 121, dtype=torch.float64):
        y = (torch.clamp(torch.round(x / step) + 2 ** (bits - 1), qmin, qmax) - 2 ** (bits - 1)) * step
        best = min(best, torch.trapezoid((x - y) ** 2 * pdf, x).item())
    return best  # ~0.01186


def test_per_channel_lp_search_error_is_near_the_optimal_uniform_quantizer_at_4_bits():
    w, sigma = _gaussian_weights()
    q = WeightQuantizer(w.shape, 4, init="lp")
    q.init_from(w)
    mse = (q(w).detach() - w).pow(2).mean(1)
    ratio = mse / (_optimal_uniform_4bit_gaussian_mse() * sigma**2)
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.10)


def test_lp_search_is_vectorised_over_channels_and_never_worse_than_minmax():
    w, _ = _gaussian_weights(c=16, d=512)
    w[3] *= 50  # channels are independent: a wild channel does not disturb the others
    qmin, qmax = qrange(4, False)
    s_mm, z_mm = minmax_init(w, qmin, qmax, False)
    s_lp, z_lp = lp_init(w, qmin, qmax, False, p=2.4)
    s_one, z_one = lp_init(w[5:6], qmin, qmax, False, p=2.4)
    assert s_lp[5] == s_one[0] and z_lp[5] == z_one[0]

    def err(s, z):
        return (fake_quant_forward(w, s[:, None], z[:, None], qmin, qmax) - w).abs().pow(2.4).sum(1)

    assert torch.all(err(s_lp, z_lp) <= err(s_mm, z_mm) * (1 + 1e-6))


# -- bf16 -------------------------------------------------------------------------------------------


def test_quantizer_rounds_in_fp32_under_bf16_autocast():
    # the pitfall: 127.4 / 1.0 computed in bf16 is 127.5 and rounds to 128 (out of int8 range)
    x = torch.tensor([127.4, -3.3, 55.6])
    s, z = torch.tensor(1.0), torch.tensor(0.0)
    naive = torch.round(x.bfloat16() / s.bfloat16())
    assert naive[0].item() == 128.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = FakeQuantize.apply(x, s, z, -128, 127, 1.0)
        codes = quantize_codes(x, s, z, -128, 127)
    assert y.dtype == torch.float32
    assert y.tolist() == pytest.approx([127.0, -3.0, 56.0])
    assert codes.tolist() == [127.0, -3.0, 56.0]


def test_bf16_autocast_gives_the_same_integers_as_fp32():
    w = torch.randn(32, 16, 3, 3) * 40  # large magnitudes: bf16 division would misround many
    x = torch.randn(2, 16, 8, 8) * 300
    wq = WeightQuantizer(w.shape, 8, init="minmax")
    wq.init_from(w)
    s, z = torch.tensor(2.3), torch.tensor(128.0)
    codes_w = wq.codes(w)
    codes_x = quantize_codes(x, s, z, 0, 255)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(wq.codes(w), codes_w)
        assert torch.equal(quantize_codes(x, s, z, 0, 255), codes_x)
        y = FakeQuantize.apply(x, s, z, 0, 255, 1.0)
    assert torch.equal(y, fake_quant_forward(x, s, z, 0, 255))
