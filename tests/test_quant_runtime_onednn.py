"""oneDNN's x86 int8 kernels (``kernel="onednn"``) in the CPU runtime.

Tolerances: accumulators (oneDNN writes them as fp32, run with unit scales and no bias, exact
while ``|acc| < 2^24``; these shapes stay far below) are compared for *equality* with an int64
reference; the scaled output with the float64 value of the same formula to fp32 rounding (rtol
1e-6). The kernel tests need oneDNN to be exact on this processor (VNNI or AMX:
``onednn_unavailable()`` checks it); the dispatch tests hold on any processor.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from quant_helpers import cond_batch
from runtime_helpers import (
    assert_same_codes_until_the_first_flip,
    capture_inputs,
    layers_of,
    reference_accumulator,
)

from saq_lightning.quant.runtime import RuntimeLayer, load_runtime
from saq_lightning.quant.runtime import loader as runtime_loader
from saq_lightning.quant.runtime.loader import choose_int8_kernel
from saq_lightning.quant.runtime.onednn import (
    conv2d,
    linear,
    onednn_unavailable,
    prepack_conv,
    prepack_linear,
)

exact_here = pytest.mark.skipif(onednn_unavailable() is not None,
                                reason=f"oneDNN int8 kernels not exact here: {onednn_unavailable()}")

CONV_CASES = {
    # (B, H, W, C, N, k, stride, padding)
    "3x3-s1-p1-odd-channels": (2, 5, 6, 3, 5, 3, 1, 1),
    "3x3-s2-p1": (1, 7, 7, 70, 33, 3, 2, 1),
    "3x3-s1-p0": (1, 5, 4, 6, 4, 3, 1, 0),
    "1x1": (2, 3, 3, 3, 5, 1, 1, 0),
    "4x4-s2-p2-uneven": (1, 5, 7, 4, 3, 4, 2, 2),
}


def _codes(b, h, w, c, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g)
    wq = torch.randint(-128, 128, (n, c, k, k), dtype=torch.int8, generator=g)
    return x, wq


@exact_here
@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_accumulator_is_the_int64_product_bit_for_bit(case):
    b, h, w, c, n, k, s, p = case
    x, wq = _codes(b, h, w, c, n, k, seed=sum(case))
    zero = 131
    got = conv2d(x, 1.0, zero, prepack_conv(wq, (s, s), (p, p)), torch.ones(n), None, (s, s), (p, p))
    want = F.conv2d(x.to(torch.int64).double() - zero, wq.double(), None, s, p)  # |acc| < 2^53: exact
    assert got.shape == want.shape
    assert torch.equal(got.double(), want)


@exact_here
def test_linear_accumulator_over_the_rows_of_a_3d_input_is_the_int64_product():
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (3, 5, 19), dtype=torch.uint8, generator=g)
    wq = torch.randint(-128, 128, (6, 19), dtype=torch.int8, generator=g)
    got = linear(x, 1.0, 7, prepack_linear(wq), torch.ones(6), None)
    want = torch.einsum("blk,nk->bln", x.double() - 7, wq.double())
    assert torch.equal(got.double(), want)


@exact_here
def test_conv_epilogue_scales_per_channel_with_the_calls_activation_scale_and_adds_the_bias():
    """The activation scale is the call's, not the one the weight was packed with (per-bucket tables)."""
    x, wq = _codes(2, 5, 5, 6, 9, 3, seed=21)
    g = torch.Generator().manual_seed(22)
    sw, bias = torch.rand(9, generator=g) * 0.01, torch.randn(9, generator=g)
    packed = prepack_conv(wq, (2, 2), (1, 1))
    acc = F.conv2d(x.double() - 120, wq.double(), None, 2, 1)
    for sx in (0.05, 0.3):
        got = conv2d(x, sx, 120, packed, sw, bias, (2, 2), (1, 1))
        want = acc * (sx * sw.double()).view(1, -1, 1, 1) + bias.double().view(1, -1, 1, 1)
        torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


# -- whole UNet ----------------------------------------------------------------------------------------------

def _call():
    b = cond_batch(b=2, seed=7)
    b["timestep"] = torch.tensor([3, 997])  # two activation buckets in one batch: one oneDNN call each
    return b


@pytest.fixture(scope="module")
def unet_runs(cond_w4a8_export):
    """One call on the oneDNN kernels and one on ``_int_mm``, every layer's input captured, and the
    oneDNN accumulator of every layer on the ``_int_mm`` run's input with its exact reference."""
    if onednn_unavailable() is not None:
        pytest.skip(f"oneDNN int8 kernels not exact here: {onednn_unavailable()}")
    onednn_rt = load_runtime(cond_w4a8_export, int8_kernel="onednn")
    torch_rt = load_runtime(cond_w4a8_export, int8_kernel="torch")
    call = _call()
    with torch.no_grad(), capture_inputs(onednn_rt) as o_in, capture_inputs(torch_rt) as r_in:
        y_onednn, y_torch = onednn_rt(**call).sample, torch_rt(**call).sample
    accumulators = {}
    with torch.no_grad(), onednn_rt.timestep_context(call["timestep"], 2):
        for name, layer in layers_of(onednn_rt, RuntimeLayer).items():
            x = r_in[name][0]
            accumulators[name] = (layer.int_accumulate(x)[0], reference_accumulator(layer, x))
    return {"rt": onednn_rt, "o_in": o_in, "r_in": r_in, "y_onednn": y_onednn, "y_torch": y_torch,
            "acc": accumulators}


def test_every_layers_onednn_accumulator_in_the_unet_is_the_exact_product_of_the_codes(unet_runs):
    layers = layers_of(unet_runs["rt"], RuntimeLayer)
    kinds = {m.kernel_name() for m in layers.values()}
    assert {"onednn qconv 3x3 s1", "onednn qconv 1x1 s1", "onednn qlinear"} <= kinds, kinds
    for name, (got, want) in unet_runs["acc"].items():
        assert got.dtype == torch.int32
        assert torch.equal(got.double(), want), name


def test_whole_unet_on_onednn_gives_the_int_mm_runtimes_codes_and_output(unet_runs):
    """Same integers, same epilogue formula, float rounding in another order (the Triton test's
    argument): until the first flipped activation code every layer input agrees to 1e-5 of its
    range, a flip is by one code, and the output is within 5% of its range."""
    assert_same_codes_until_the_first_flip(unet_runs["o_in"], unet_runs["r_in"], unet_runs["y_onednn"],
                                           unet_runs["y_torch"])


def test_report_names_the_onednn_kernel_of_each_layer(unet_runs):
    report = unet_runs["rt"].runtime_report
    rows = {r.name: r for r in report.layers}
    assert rows["down_blocks.0.resnets.0.conv1"].kernel == "onednn qconv 3x3 s1"
    assert "oneDNN qconv/qlinear (requested)" in report.notes[0]


@exact_here
@pytest.mark.parametrize("zero", ["qmin", "qmax", "mixed"])
def test_8bit_weight_codes_far_from_their_zero_point_get_the_correction_term_and_stay_exact(
        cond_w4a8_export, zero):
    """oneDNN ignores weight zero points: where ``q_w - z_w`` leaves int8 the weight is centred
    elsewhere and ``dw * sum(q_x - z_x)`` over the receptive field is added; the accumulator stays
    the exact product, the output the ``_int_mm`` layer's to fp32 rounding of the summed terms."""
    rt = load_runtime(cond_w4a8_export, int8_kernel="torch")
    layer = next(m for m in layers_of(rt, RuntimeLayer).values() if m.w_bits == 8 and m.conv is not None)
    n = layer.w_zero.shape[0]
    qmin, qmax = layer.w_qmin, layer.w_qmin + 255
    values = {"qmin": [qmin] * n, "qmax": [qmax] * n, "mixed": [qmin, qmax, qmin + 128] * n}[zero][:n]
    layer.w_zero.copy_(torch.tensor(values, dtype=torch.int32))
    x = torch.randn(2, layer.weight_shape[1], 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), rt.timestep_context(torch.tensor([500, 500]), 2):
        want_y = layer(x)
        layer._requested_kernel = "onednn"
        layer.set_arithmetic("int8")
        assert layer.kernel == "onednn" and layer.__dict__["_onednn_dw"] is not None
        got, _, _ = layer.int_accumulate(x)
        assert torch.equal(got.double(), reference_accumulator(layer, x))
        y = layer(x)
    scale = want_y.abs().max().item()
    torch.testing.assert_close(y, want_y, rtol=0, atol=1e-5 * scale)


# -- dispatch (any processor) -------------------------------------------------------------------------------

def test_auto_on_a_cpu_without_exact_onednn_kernels_uses_int_mm_and_says_why(monkeypatch, cond_w4a8_export):
    monkeypatch.setattr(runtime_loader, "onednn_unavailable", lambda: "u8*s8 pairs saturate (test)")
    kernel, arithmetic, line = choose_int8_kernel(torch.device("cpu"), "auto")
    assert (kernel, arithmetic) == ("torch", "int8")
    assert "torch._int_mm where it beats float per layer" in line and "not oneDNN: u8*s8 pairs saturate (test)" in line
    report = load_runtime(cond_w4a8_export).runtime_report
    assert not any(r.kernel.startswith("onednn") for r in report.layers)


def test_onednn_requested_where_it_cannot_run_is_refused_naming_why(monkeypatch):
    with pytest.raises(ValueError, match="int8_kernel='onednn': oneDNN's int8 kernels run on a CPU"):
        choose_int8_kernel(torch.device("cuda"), "onednn")
    monkeypatch.setattr(runtime_loader, "onednn_unavailable", lambda: "no VNNI (test)")
    with pytest.raises(ValueError, match=r"int8_kernel='onednn': no VNNI \(test\)"):
        choose_int8_kernel(torch.device("cpu"), "onednn")


def test_auto_on_this_cpu_picks_onednn_exactly_when_it_is_exact_here():
    kernel, _, line = choose_int8_kernel(torch.device("cpu"), "auto")
    why = onednn_unavailable()
    assert kernel == ("onednn" if why is None else "torch")
    assert "CPU flags:" in line


@exact_here
def test_onednn_layers_load_and_run_where_torch_int_mm_is_missing(monkeypatch, cond_w4a8_export):
    """oneDNN layers never call ``torch._int_mm``: its absence is no reason to emulate them."""
    from saq_lightning.quant.runtime import kernels

    def no_int_mm(a, b):
        raise RuntimeError("_int_mm not implemented for this backend")

    kernels.probe_int8_gemm.cache_clear()
    monkeypatch.setattr(torch, "_int_mm", no_int_mm)
    try:
        rt = load_runtime(cond_w4a8_export, int8_kernel="onednn")
        with torch.no_grad():
            rt(**_call())
    finally:
        kernels.probe_int8_gemm.cache_clear()
    report = rt.runtime_report
    assert report.counts().get("emulated", 0) == 0 and not any("fallback" in n for n in report.notes)
    assert all(r.kernel.startswith("onednn") for r in report.layers if r.arithmetic == "int8")
