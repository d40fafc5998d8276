"""QuantConv2d / QuantLinear: no weight copies, LoRA merged before the weight quantizer, the
recomputing layer identical to the plain autograd chain, and what the student shares with its teacher."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_unet2d_condition
from quant_helpers import calibrated_cond_student, cond_batch, perturb_lora
from torch import nn

from saq_lightning.quant import (
    FakeQuantize,
    LayerPlan,
    LoRA,
    QuantConv2d,
    QuantLinear,
    QuantPolicy,
    TimestepContext,
    quantize_model,
    set_quant_state,
)


def _layer(base: nn.Module, lora_rank: int = 4):
    ctx = TimestepContext()
    cls = QuantConv2d if isinstance(base, nn.Conv2d) else QuantLinear
    policy = QuantPolicy(weight_bits=4, act_bits=8, lora_rank=lora_rank, n_buckets=10, weight_init="minmax",
                         act_init="minmax")
    layer = cls(base, ctx, LayerPlan("", type(base).__name__, 4, 8, lora_rank, policy))
    layer.w_quant.init_from(layer.merged_weight())
    layer.a_quant._set_params(torch.linspace(0.01, 0.05, 10), torch.full((10,), 120.0))
    if layer.lora is not None:
        with torch.no_grad():
            layer.lora.B.normal_(0, 0.05)
    return layer, ctx


# -- wrapping without copies ----------------------------------------------------------------------


def test_wrapped_layer_uses_the_original_weight_tensor():
    conv = nn.Conv2d(4, 8, 3, padding=1)
    layer, _ = _layer(conv)
    assert layer.base is conv and layer.base.weight is conv.weight


def test_student_shares_every_teacher_tensor_and_leaves_the_teacher_intact():
    teacher = make_tiny_unet2d_condition().eval()
    b = cond_batch()
    with torch.no_grad():
        before = teacher(**b).sample
    student, _ = quantize_model(teacher, "w4a4")
    teacher_ptrs = {p.data_ptr() for p in teacher.parameters()}
    student_base = [p for n, p in student.named_parameters() if not p.requires_grad]
    assert {p.data_ptr() for p in student_base} == teacher_ptrs  # shared, not copied
    assert all(not p.requires_grad for p in teacher.parameters())  # teacher frozen
    assert not any(isinstance(m, (QuantConv2d, QuantLinear)) for m in teacher.modules())
    trainable = {n.rsplit(".", 1)[-1] for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {"A", "B", "step", "zero_point"}  # LoRA and quantizer parameters only
    with torch.no_grad():
        assert torch.equal(teacher(**b).sample, before)


def test_student_with_quantization_off_and_zero_lora_reproduces_the_teacher_exactly():
    teacher, student = calibrated_cond_student()
    b = cond_batch()
    with torch.no_grad(), set_quant_state(student, weight=False, act=False):
        assert torch.equal(student(**b).sample, teacher(**b).sample)


# -- LoRA -----------------------------------------------------------------------------------------


def test_lora_with_b_zero_leaves_the_output_unchanged():
    teacher = make_tiny_unet2d_condition().eval()
    with_lora, _ = quantize_model(teacher, "w4a4")
    without, _ = quantize_model(teacher, {"name": "w4a4-nolora", "lora_rank": 0})
    b = cond_batch()
    from saq_lightning.quant import calibrate

    calibrate(with_lora, b, act_method="minmax", weight_method="minmax")
    calibrate(without, b, act_method="minmax", weight_method="minmax")
    assert all(torch.count_nonzero(m.lora.B) == 0 for _, m in with_lora.quant_layers() if m.lora is not None)
    with torch.no_grad():
        assert torch.equal(with_lora(**b).sample, without(**b).sample)


def test_conv_lora_delta_equals_a_base_shaped_conv_followed_by_a_1x1_conv():
    base = nn.Conv2d(6, 10, 3, stride=2, padding=1)
    lora = LoRA(base.weight.shape, rank=3, alpha=6.0)
    with torch.no_grad():
        lora.B.normal_()
    x = torch.randn(2, 6, 9, 9)
    a_out = F.conv2d(x, lora.A, stride=2, padding=1)  # A: the base kernel/stride/padding
    branch = F.conv2d(a_out, lora.B[:, :, None, None]) * lora.scaling  # B: 1x1
    merged = F.conv2d(x, lora.delta(), stride=2, padding=1)
    torch.testing.assert_close(merged, branch, rtol=1e-5, atol=1e-5)


def test_lora_is_merged_before_the_weight_quantizer():
    layer, _ = _layer(nn.Linear(16, 8))
    w = layer.base.weight + layer.lora.delta()
    codes = layer.weight_codes()
    s, z = layer.w_quant.effective()
    assert torch.equal(codes.float(), torch.clamp(torch.round(w / s) + z, 0, 15))
    assert len(codes.unique()) > 4  # really a 4-bit integer weight, LoRA included


# -- recomputing autograd path --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "base,x_shape",
    [(nn.Conv2d(4, 8, 3, padding=1), (3, 4, 6, 6)), (nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), (3, 4, 7, 7)),
     (nn.Linear(12, 5), (3, 7, 12))],
)
def test_layer_matches_the_plain_autograd_chain_in_values_and_gradients(base, x_shape):
    base.requires_grad_(False)
    layer, ctx = _layer(base)
    x = torch.randn(x_shape) * 2

    def plain_chain(xi):  # conv(fq(x), fq(W + s B A)) in plain autograd, keeping every intermediate
        a_s, a_z, a_gf = layer.a_quant.params_for(xi)
        wq = layer.w_quant
        xq = FakeQuantize.apply(xi, a_s, a_z, layer.a_quant.qmin, layer.a_quant.qmax, a_gf)
        w = FakeQuantize.apply(layer.base.weight + layer.lora.delta(), *wq.effective(), wq.qmin, wq.qmax,
                               wq.grad_factor)
        return layer.op(xq, w, layer.bias)

    results = []
    for run in (layer, plain_chain):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        with ctx.active(torch.tensor([4, 9, 4])):  # a repeated bucket accumulates
            y = run(xi)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads = [xi.grad] + [p.grad for p in (layer.lora.A, layer.lora.B, layer.w_quant.step,
                                              layer.w_quant.zero_point, layer.a_quant.step, layer.a_quant.zero_point)]
        results.append((y.detach(), grads))
    (y1, g1), (y2, g2) = results
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base", [nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.Linear(5, 4)])
def test_layer_backward_passes_gradcheck_when_quantization_is_off(base):
    base = base.double().requires_grad_(False)
    layer, _ = _layer(base)
    layer.lora.double()
    layer.quant_weight = layer.quant_act = False  # quantized, the function is piecewise constant
    x = torch.randn((2, 3, 5, 5) if isinstance(base, nn.Conv2d) else (2, 5), dtype=torch.double)
    a = layer.lora.A.detach().clone().requires_grad_()
    b = layer.lora.B.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(layer, (x.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda a, b: _run_with_lora(layer, x, a, b), (a, b))


def _run_with_lora(layer, x, a, b):
    lora = layer.lora
    old_a, old_b = lora.A, lora.B
    try:
        del lora.A, lora.B
        lora.A, lora.B = a, b  # plain tensors: gradcheck differentiates through them
        return layer(x)
    finally:
        del lora.A, lora.B
        lora.A, lora.B = old_a, old_b


def test_uninitialised_quantizers_raise_a_clear_error():
    student, _ = quantize_model(make_tiny_unet2d_condition().eval(), "w4a4")
    with pytest.raises(RuntimeError, match="not initialised.*calibrate"):
        student(**cond_batch())


def test_bf16_autocast_student_runs_with_fp32_quantizer_numerics():
    _, student = calibrated_cond_student()
    perturb_lora(student)
    b = cond_batch()
    layer = dict(student.quant_layers())["down_blocks.0.resnets.0.conv1"]
    codes = layer.weight_codes()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer.weight_codes(), codes)  # LoRA delta and rounding stay fp32
        out = student(**b).sample
        out.float().square().mean().backward()
    assert out.dtype == torch.bfloat16
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
