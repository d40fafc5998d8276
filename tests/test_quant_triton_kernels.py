"""The fused Triton quantizer kernels (quant/kernels/), run on the CPU in Triton's interpreter.

Forward values are bit-identical to the composed eager pieces (same arithmetic, operation for
operation), gradients equal the eager gradients to rtol 1e-5 (only the order of the step and
zero-point sums differs), in fp32 and under bf16 autocast (quantizer numerics fp32). Shapes are
tiny: the interpreter runs each kernel program as numpy code.

``TRITON_INTERPRET=1`` must be set when the kernel module is *imported* (``@triton.jit`` decides
then); the ``interpreter`` fixture sets it and (re)imports the kernel modules for this file's
tests only, and re-imports them without it afterwards, so other tests in the same process
(pytest-xdist worker) see the process' own setting.
"""

from __future__ import annotations

import importlib
import sys
from functools import partial

import pytest
import torch
from conftest import make_tiny_unet2d_condition
from quant_helpers import calibrated_cond_student, cond_batch, perturb_lora
from torch import nn

from saq_lightning.quant import (
    LayerPlan,
    QuantConv2d,
    QuantLinear,
    QuantPolicy,
    TimestepContext,
    quantize_model,
)
from saq_lightning.quant.functional import fake_quantize
from saq_lightning.quant.ops import Conv2dOp, Quantized, merge_lora, quantized_op

pytest.importorskip("triton", reason="the fused quantizer kernels need the triton package")

KERNEL_MODULES = ("saq_lightning.quant.kernels.triton_fake_quant", "saq_lightning.quant.kernels.fused")


def _import_kernels() -> None:
    for name in KERNEL_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])
        else:
            importlib.import_module(name)


@pytest.fixture(scope="module")
def interpreter():
    """The kernel modules imported under ``TRITON_INTERPRET=1`` (their kernels run in numpy)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        _import_kernels()
        from triton.runtime.interpreter import InterpretedFunction

        tfq = sys.modules[KERNEL_MODULES[0]]
        assert isinstance(tfq._fq_forward_kernel, InterpretedFunction)
        yield sys.modules[KERNEL_MODULES[1]]
    _import_kernels()


def _act_case(seed: int = 0):
    """A per-sample activation case with ties (x/s = k + 0.5), clamped codes at both ends."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 6, 7, generator=g) * 3
    s = torch.tensor([0.3, 0.25, 0.5]).view(3, 1, 1, 1)
    z = torch.tensor([7.0, 3.0, 12.0]).view(3, 1, 1, 1)
    x[0, 0, 0, :6] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 100.0]) * 0.3
    x[1, 0, 0, 0] = -100.0
    return x, s, z


# -- the pieces ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_activation_piece_forward_is_bit_identical_to_the_eager_piece(interpreter, dtype):
    x, s, z = _act_case()
    x = x.to(dtype)
    eager = fake_quantize(x.float(), s, z, 0, 15, 0.1).to(dtype)  # the layer's fp32 piece, then .to(cdt)
    fused = interpreter.fused_fake_quant(x, s, z, 0, 15, 0.1, dtype)
    assert fused.dtype == dtype
    assert torch.equal(fused, eager)


def test_fused_activation_piece_gradients_equal_the_eager_gradients(interpreter):
    x, s, z = _act_case()
    up = torch.linspace(-1, 1, x.numel()).view_as(x)
    grads = []
    for fn in (partial(fake_quantize, grad_factor=0.1),
               partial(interpreter.fused_fake_quant, grad_factor=0.1, out_dtype=torch.float32)):
        leaves = [t.clone().requires_grad_() for t in (x, s, z)]
        y = fn(*leaves, qmin=0, qmax=15)
        grads.append(torch.autograd.grad((y * up).sum(), leaves))
    for eager, fused in zip(*grads):
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-7)
    assert torch.equal(grads[0][0], grads[1][0])  # straight-through dL/dx: no sum, exact


def test_fused_activation_piece_keeps_a_nan_input_nan(interpreter):
    """As torch.clamp does, so that the non-finite loss guard sees a diverged activation."""
    x, s, z = _act_case()
    x[2, 1, 1, 1] = float("nan")
    y = interpreter.fused_fake_quant(x, s, z, 0, 15, 0.1, torch.float32)
    assert torch.isnan(y[2, 1, 1, 1]) and torch.isfinite(y).sum() == y.numel() - 1


@pytest.mark.parametrize("lora", [True, False])
def test_fused_weight_piece_matches_merge_then_fake_quantize(interpreter, lora):
    """Forward bit-identical; gradients of A, B (the same GEMMs) exact, of step/zero point to rtol 1e-5."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(6, 4, 3, 3, generator=g) * 0.2
    A, B = torch.randn(2, 4, 3, 3, generator=g) * 0.2, torch.randn(6, 2, generator=g) * 0.1
    s, z = torch.linspace(0.02, 0.05, 6).view(6, 1, 1, 1), torch.tensor([7.0, 8, 6, 7, 9, 5]).view(6, 1, 1, 1)
    up = torch.linspace(-1, 1, W.numel()).view_as(W)
    results = []
    for fused in (False, True):
        a, b = (A.clone().requires_grad_(), B.clone().requires_grad_()) if lora else (None, None)
        leaves = [t for t in (a, b) if t is not None] + [s.clone().requires_grad_(), z.clone().requires_grad_()]
        if fused:
            y = interpreter.fused_merged_fake_quant(0.5, 0, 15, 0.2, torch.float32, W, a, b, leaves[-2], leaves[-1])
        else:
            y = fake_quantize(merge_lora(W, a, b, 0.5), leaves[-2], leaves[-1], 0, 15, 0.2)
        results.append((y.detach(), torch.autograd.grad((y * up).sum(), leaves)))
    (y0, g0), (y1, g1) = results
    assert torch.equal(y1, y0)
    for eager, fused in zip(g0, g1):
        torch.testing.assert_close(fused, eager, rtol=1e-5, atol=1e-7)


# -- the layers ----------------------------------------------------------------------------------


def _layer(base: nn.Module, kernels: str):
    base.requires_grad_(False)
    ctx = TimestepContext()
    cls = QuantConv2d if isinstance(base, nn.Conv2d) else QuantLinear
    policy = QuantPolicy(weight_bits=4, act_bits=4, lora_rank=2, n_buckets=10, weight_init="minmax", act_init="minmax")
    layer = cls(base, ctx, LayerPlan("layer", type(base).__name__, 4, 4, 2, policy))
    layer.set_kernels(kernels)
    layer.w_quant.init_from(layer.merged_weight())
    layer.a_quant._set_params(torch.linspace(0.05, 0.25, 10), torch.full((10,), 7.0))
    with torch.no_grad():
        layer.lora.B.normal_(0, 0.05, generator=torch.Generator().manual_seed(2))
    return layer, ctx


def _layer_step(layer, ctx, x, autocast: bool):
    layer.zero_grad()
    xi = x.clone().requires_grad_()
    with ctx.active(torch.tensor([4, 9, 4])), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        y = layer(xi)  # buckets 4, 9, 4: the table gradient adds the two samples of bucket 4
    (y.float() * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    params = (layer.lora.A, layer.lora.B, layer.w_quant.step, layer.w_quant.zero_point, layer.a_quant.step,
              layer.a_quant.zero_point)
    return y.detach(), [xi.grad] + [p.grad for p in params]


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_triton_layer_equals_the_eager_layer_in_values_and_gradients(interpreter, kind, autocast):
    torch.manual_seed(0)
    base, x = ((nn.Conv2d(4, 6, 3, padding=1), torch.randn(3, 4, 5, 5) * 2) if kind == "conv"
               else (nn.Linear(8, 5), torch.randn(3, 4, 8) * 2))
    eager, ctx_e = _layer(base, "eager")
    fused, ctx_f = _layer(base, "triton")
    fused.load_state_dict(eager.state_dict())
    y0, g0 = _layer_step(eager, ctx_e, x, autocast)
    y1, g1 = _layer_step(fused, ctx_f, x, autocast)
    assert y1.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert torch.equal(y1, y0)
    for name, e, f in zip(("x", "A", "B", "w_step", "w_zp", "a_step", "a_zp"), g0, g1):
        torch.testing.assert_close(f, e, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_triton_layer_keeps_only_the_pieces_inputs_for_backward(interpreter):
    """Same memory property as the eager pieces: no fq(x), merged or quantized weight saved."""
    torch.manual_seed(0)
    base = nn.Conv2d(4, 8, 3, padding=1).requires_grad_(False)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    A, B = torch.randn(2, 4, 3, 3, requires_grad=True), torch.randn(8, 2, requires_grad=True)
    s, z = torch.full((2, 1, 1, 1), 0.05, requires_grad=True), torch.full((2, 1, 1, 1), 100.0)
    ws, wz = torch.full((8, 1, 1, 1), 0.02, requires_grad=True), torch.full((8, 1, 1, 1), 7.0)
    xq = Quantized(partial(interpreter.fused_fake_quant, qmin=0, qmax=255, grad_factor=1.0, out_dtype=torch.float32),
                   (x, s, z))
    wq = Quantized(partial(interpreter.fused_merged_fake_quant, 1.0, 0, 15, 1.0, torch.float32),
                   (base.weight, A, B, ws, wz))
    inputs = {t.data_ptr() for t in (x, base.weight, A, B, s, z, ws, wz, base.bias)}
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = quantized_op(Conv2dOp((1, 1), (1, 1), (1, 1), 1), xq, wq, base.bias, torch.float32)
    assert saved and all(t.data_ptr() in inputs for t in saved)
    y.sum().backward()
    assert all(t.grad is not None for t in (x, A, B, s, ws))


def test_student_on_triton_kernels_gives_the_eager_loss_and_gradients(interpreter):
    """The tiny student, one fp32 training step; the first down block quantized (its convs, the
    attention's linears and 1x1 convs: 15 layers; the interpreter's cost is per kernel launch)."""
    policy = {"preset": "w4a4", "include": ["down_blocks.0.*"], "rules": [], "fp_patterns": ["*.downsamplers.*"]}
    _, student = calibrated_cond_student(policy)
    assert len(list(student.quant_layers())) == 15
    perturb_lora(student)
    b = cond_batch(b=2)
    results = {}
    for kernels in ("eager", "triton"):
        student.set_quant_kernels(kernels)
        student.zero_grad()
        loss = student(**b).sample.square().mean()
        loss.backward()
        results[kernels] = (loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters()
                                            if p.grad is not None})
    (l0, g0), (l1, g1) = results["eager"], results["triton"]
    assert torch.equal(l1, l0)
    assert g1.keys() == g0.keys() and len(g0) > 0
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")


# -- the switch (no kernels run) -------------------------------------------------------------------


def test_auto_runs_the_eager_pieces_on_the_cpu_and_the_report_says_so():
    student, report = quantize_model(make_tiny_unet2d_condition().eval(), "w4a4", warn=False)
    assert {r.kernels for r in report.quantized} == {"eager"}
    assert "kernels" in str(report).splitlines()[1]
    assert {layer.kernel_paths() for _, layer in student.quant_layers()} == {("eager", "eager")}


def test_auto_picks_the_triton_kernels_on_cuda():
    from saq_lightning.quant.kernels import kernel_path

    assert kernel_path("auto", torch.device("cuda", 0)) == "triton"
    assert kernel_path("eager", torch.device("cuda", 0)) == "eager"


def test_triton_requested_where_it_cannot_run_is_a_clear_error(monkeypatch):
    from saq_lightning.quant.kernels import QuantKernelsError
    from saq_lightning.user_errors import user_error_types

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    student, _ = quantize_model(make_tiny_unet2d_condition().eval(), "w4a4", warn=False, kernels="triton")
    with pytest.raises(QuantKernelsError, match=r"quant_kernels='triton': .*CUDA.*TRITON_INTERPRET=1.*'cpu'"):
        student(**cond_batch(b=2))
    assert issubclass(QuantKernelsError, user_error_types())


def test_an_unknown_kernels_choice_is_refused():
    from saq_lightning.quant.kernels import QuantKernelsError

    with pytest.raises(QuantKernelsError, match=r"quant_kernels must be one of \['auto', 'triton', 'eager'\], got 'fused'"):
        quantize_model(make_tiny_unet2d_condition().eval(), "w4a4", warn=False, kernels="fused")


def test_kernels_summary_names_the_path_of_every_layer():
    from saq_lightning.quant.report import kernels_summary

    student, report = quantize_model(make_tiny_unet2d_condition().eval(), "w4a4", warn=False)
    n = len(report.quantized)
    assert kernels_summary(student, torch.device("cpu")) == (
        f"quant_kernels=auto on cpu: quantizer pieces run eager in {n} of {n} layers")


def test_training_module_passes_quant_kernels_to_every_layer_and_a_resume_may_change_it(tmp_path):
    from test_training_helpers import save_tiny_teacher, tiny_module

    from saq_lightning.lightning.resume import resume_mismatches

    module = tiny_module(save_tiny_teacher(tmp_path / "teacher"), quant_kernels="eager")
    assert {layer.kernels for _, layer in module.student.quant_layers()} == {"eager"}
    assert module.hparams["quant_kernels"] == "eager"
    assert resume_mismatches(dict(module.hparams), {**module.hparams, "quant_kernels": "triton"}) == []
