"""The Triton int8 kernels, run on this CPU by Triton's interpreter (``TRITON_INTERPRET=1``).

The kernel source is the one a GPU compiles (it is jitted lazily, per mode, when first called),
so these tests check its index arithmetic, masks, border handling, in-kernel int4 unpacking and
epilogue. Tolerances: accumulators are compared for *equality* with an int64 reference; the
scaled fp32 output with the float64 value of the same formula to fp32 rounding (rtol 1e-6:
one rounding of the product and one of the bias add); bf16 output is the fp32 output rounded
once. Shapes are tiny: the interpreter runs each program in numpy.
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

from saq_lightning.quant.runtime import ProbeConfig, RuntimeLayer, load_runtime
from saq_lightning.quant.runtime.kernels import pack_int4
from saq_lightning.quant.runtime.loader import choose_int8_kernel
from saq_lightning.quant.runtime.onednn import onednn_unavailable
from saq_lightning.quant.runtime.triton_conv import conv2d_int8
from saq_lightning.quant.runtime.triton_gemm import linear_int8


@pytest.fixture
def interpreter(monkeypatch):
    """Triton's CPU interpreter for this test (read when the kernel is first jitted per mode)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


def _operands(b, h, w, c, n, k, *, w4: bool, seed: int):
    """Random stored codes ``A'`` (int8), ``W'`` (int8, or 4-bit codes and their packed bytes)
    and zero-point offsets ``da [B]``, ``dw [N]`` spanning the int8 range of ``-da``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-128, 128, (b, h, w, c), dtype=torch.int8, generator=g)
    if w4:
        codes = torch.randint(0, 16, (n, c, k, k), generator=g)
        stored = pack_int4(codes)
    else:
        codes = torch.randint(-128, 128, (n, c, k, k), dtype=torch.int8, generator=g)
        stored = codes
    da = torch.randint(-127, 129, (b,), dtype=torch.int32, generator=g)
    da[0] = 128  # the extreme: border code -128
    dw = torch.randint(-130, 130, (n,), dtype=torch.int32, generator=g)
    col = codes.reshape(n, -1).to(torch.int32).sum(1) + c * k * k * dw
    return a, codes.to(torch.int64), stored, da, dw, col


def _int64_conv(a, codes, da, dw, stride, padding):
    """``sum (A' + da)(W' + dw)`` over the kernel window in int64, borders contributing zero."""
    x = a.to(torch.int64) + da.to(torch.int64).view(-1, 1, 1, 1)  # centred codes, [B, H, W, C]
    wc = codes + dw.to(torch.int64).view(-1, 1, 1, 1)  # [N, C, kh, kw]
    ph, pw = padding
    x = F.pad(x, (0, 0, pw, pw, ph, ph))
    n, _, kh, kw = wc.shape
    ho = (x.shape[1] - kh) // stride[0] + 1
    wo = (x.shape[2] - kw) // stride[1] + 1
    out = torch.zeros(x.shape[0], ho, wo, n, dtype=torch.int64)
    for i in range(kh):
        for j in range(kw):
            tap = x[:, i: i + (ho - 1) * stride[0] + 1: stride[0], j: j + (wo - 1) * stride[1] + 1: stride[1]]
            out += torch.einsum("bhwc,nc->bhwn", tap, wc[:, :, i, j])
    return out


CONV_CASES = {
    # (B, H, W, C, N, k, stride, padding, W4)
    "3x3-s1-p1-odd-channels": (2, 5, 6, 3, 5, 3, 1, 1, False),
    "3x3-s2-p1-channels-over-one-tile": (1, 7, 7, 70, 70, 3, 2, 1, False),  # tiles cap at 64
    "3x3-s2-p1-w4-packed": (3, 6, 5, 5, 7, 3, 2, 1, True),
    "3x3-s1-p0": (1, 5, 4, 6, 4, 3, 1, 0, False),
    "1x1-w4-packed-odd-weight-count": (1, 3, 3, 3, 5, 1, 1, 0, True),
    "4x4-s2-p2-uneven": (1, 5, 7, 4, 3, 4, 2, 2, False),
}


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_accumulator_is_the_int64_product_bit_for_bit(interpreter, case):
    b, h, w, c, n, k, s, p, w4 = case
    a, codes, stored, da, dw, col = _operands(b, h, w, c, n, k, w4=w4, seed=sum(case[:6]))
    got = conv2d_int8(a, stored, (n, c, k, k), int4_packed=w4, stride=(s, s), padding=(p, p), dw=dw, col=col,
                      da=da, raw=True)
    want = _int64_conv(a, codes, da, dw, (s, s), (p, p))
    assert got.dtype == torch.int32 and got.shape == want.shape
    assert torch.equal(got.to(torch.int64), want)


def test_conv_without_zero_point_offsets_is_the_plain_int8_product(interpreter):
    """``dw``/``da`` absent (centred <= 7-bit codes): no correction terms, borders read 0."""
    a, codes, stored, _, _, _ = _operands(2, 4, 4, 3, 5, 3, w4=False, seed=5)
    got = conv2d_int8(a, stored, (5, 3, 3, 3), int4_packed=False, padding=(1, 1), raw=True)
    zeros = torch.zeros(2, dtype=torch.int32)
    assert torch.equal(got.to(torch.int64), _int64_conv(a, codes, zeros, torch.zeros(5, dtype=torch.int32),
                                                        (1, 1), (1, 1)))


@pytest.mark.parametrize("w4", [False, True], ids=["int8", "w4-packed"])
def test_linear_accumulator_uses_each_samples_offset_over_its_rows(interpreter, w4):
    """``[B, L, K]`` input (attention projections): ``da`` of sample ``b`` applies to its ``L`` rows."""
    _, codes, stored, da, dw, col = _operands(3, 1, 1, 19, 6, 1, w4=w4, seed=11)
    g = torch.Generator().manual_seed(12)
    a = torch.randint(-128, 128, (3, 5, 19), dtype=torch.int8, generator=g)
    got = linear_int8(a, stored, (6, 19), int4_packed=w4, dw=dw, col=col, da=da, raw=True)
    x = a.to(torch.int64) + da.to(torch.int64).view(-1, 1, 1)
    want = torch.einsum("blk,nk->bln", x, codes.view(6, 19) + dw.to(torch.int64).view(-1, 1))
    assert torch.equal(got.to(torch.int64), want)


def _epilogue_inputs(seed: int):
    a, codes, stored, da, dw, col = _operands(2, 5, 5, 6, 9, 3, w4=True, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    sx, sw, bias = torch.rand(2, generator=g) * 0.1, torch.rand(9, generator=g) * 0.01, torch.randn(9, generator=g)
    kw = {"int4_packed": True, "stride": (2, 2), "padding": (1, 1), "dw": dw, "col": col, "da": da,
          "sx": sx, "sw": sw, "bias": bias}
    acc = _int64_conv(a, codes, da, dw, (2, 2), (1, 1))
    want = acc.double() * (sx.double().view(-1, 1, 1, 1) * sw.double()) + bias.double()
    return a, stored, kw, want


def test_epilogue_scales_per_sample_and_channel_and_adds_the_bias(interpreter):
    a, stored, kw, want = _epilogue_inputs(seed=21)
    got = conv2d_int8(a, stored, (9, 6, 3, 3), **kw)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)


def test_bf16_output_is_the_fp32_epilogue_rounded_once(interpreter):
    a, stored, kw, _ = _epilogue_inputs(seed=31)
    fp32 = conv2d_int8(a, stored, (9, 6, 3, 3), **kw)
    bf16 = conv2d_int8(a, stored, (9, 6, 3, 3), out_dtype=torch.bfloat16, **kw)
    assert bf16.dtype == torch.bfloat16
    assert torch.equal(bf16, fp32.bfloat16())


# -- whole UNet -------------------------------------------------------------------------------------------

def _call():
    b = cond_batch(b=2, seed=7)
    b["timestep"] = torch.tensor([3, 997])
    return b


def one_layer_per_kernel(rt) -> dict[str, RuntimeLayer]:
    """The first layer of each (kernel, bits, input kind) in the UNet: every kernel variant it
    runs (3x3 W4 and 8-bit, 1x1, Linear on [B, C] and on [B, L, C] rows), interpreted once."""
    picked: dict[tuple, str] = {}
    for name, m in layers_of(rt, RuntimeLayer).items():
        key = (m.kernel_name(), m.w_bits, m.a_quant.bits, "time_emb" in name or "linear_" in name)
        picked.setdefault(key, name)
    layers = layers_of(rt, RuntimeLayer)
    return {name: layers[name] for name in picked.values()}


@pytest.fixture(scope="module")
def unet_runs(cond_w4a8_export):
    """One call of the runtime on the Triton kernels (interpreted) and one on ``_int_mm``, with
    every quantized layer's input and activation codes captured, plus the Triton accumulators of
    the ``_int_mm`` run's inputs for one layer of each kernel variant and bit width."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRITON_INTERPRET", "1")
        triton_rt = load_runtime(cond_w4a8_export, int8_kernel="triton")
        torch_rt = load_runtime(cond_w4a8_export, int8_kernel="torch")
        call = _call()
        with torch.no_grad(), capture_inputs(triton_rt) as t_in, capture_inputs(torch_rt) as r_in:
            y_triton, y_torch = triton_rt(**call).sample, torch_rt(**call).sample
        accumulators = {}
        with torch.no_grad(), triton_rt.timestep_context(call["timestep"], 2):
            for name, layer in one_layer_per_kernel(triton_rt).items():
                x = r_in[name][0]
                accumulators[name] = (layer.int_accumulate(x)[0], reference_accumulator(layer, x))
    return {"rt": triton_rt, "t_in": t_in, "r_in": r_in, "y_triton": y_triton, "y_torch": y_torch,
            "acc": accumulators}


def test_each_kernel_variants_accumulator_in_the_unet_is_the_exact_product_of_the_codes(unet_runs):
    layers = layers_of(unet_runs["rt"], RuntimeLayer)
    assert layers and all(m.kernel == "triton" for m in layers.values())
    kinds = {layers[n].kernel_name() for n in unet_runs["acc"]}
    # (this UNet's policy keeps its stride-2 downsamplers FP: stride 2 is in the kernel tests above)
    assert {"triton igemm 3x3 s1", "triton igemm 3x3 s1, int4 unpacked in kernel", "triton gemm",
            "triton gemm, int4 unpacked in kernel", "triton igemm 1x1 s1, int4 unpacked in kernel"} <= kinds, kinds
    for name, (got, want) in unet_runs["acc"].items():
        assert got.dtype == torch.int32
        assert torch.equal(got.double(), want), name


def test_whole_unet_on_triton_kernels_gives_the_int_mm_runtimes_codes_and_output(unet_runs):
    """Same integers, same epilogue formula: layer outputs differ by fp32 rounding at most (the
    Triton output is channels last and its product/bias add unfused, which moves the rounding of
    the float ops after it). Such a difference can move an activation lying on a rounding boundary
    to the neighbouring code in the next layer, and from there the difference cascades (measured:
    the first flip in the mid block, then 10% of the 8-bit codes after it, output within 1.5% of
    its range). So: until the first flipped code every layer input agrees to fp32 rounding
    (1e-5 of its range), that flip is by one code, and the output is within 5% of its range."""
    assert_same_codes_until_the_first_flip(unet_runs["t_in"], unet_runs["r_in"], unet_runs["y_triton"],
                                           unet_runs["y_torch"])


def test_report_names_the_triton_kernel_of_each_layer(unet_runs):
    report = unet_runs["rt"].runtime_report
    rows = {r.name: r for r in report.layers}
    assert rows["down_blocks.0.resnets.0.conv1"].kernel == "triton igemm 3x3 s1, int4 unpacked in kernel"
    assert rows["conv_in"].kernel == "triton igemm 3x3 s1"  # the policy keeps conv_in at 8 bits
    assert any(r.kernel.startswith("triton gemm") for r in report.layers)
    assert "Triton implicit GEMM" in report.notes[0]
    assert "[triton igemm 3x3 s1" in str(report)


# -- dispatch ----------------------------------------------------------------------------------------------

def test_triton_on_a_cpu_without_the_interpreter_is_refused(monkeypatch, cond_w4a8_export):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="int8_kernel='triton': Triton kernels run on CUDA devices"):
        load_runtime(cond_w4a8_export, int8_kernel="triton")


def test_auto_on_a_cpu_names_the_per_layer_kernel_choice_and_the_cpu_flags(cond_w4a8_export):
    onednn = onednn_unavailable() is None  # (tests/test_quant_runtime_onednn.py: both cases)
    report = load_runtime(cond_w4a8_export).runtime_report
    line = report.notes[0]
    phrase = "oneDNN qconv/qlinear where they beat float" if onednn else "torch._int_mm where it beats float"
    assert phrase in line and "CPU flags:" in line
    assert report.notes[1].startswith("per-layer choice measured on this CPU at load")
    prefix = "onednn" if onednn else "torch._int_mm"
    assert all(r.kernel.startswith(prefix) for r in report.layers if r.arithmetic == "int8")


def test_a_cpu_where_int8_is_slower_than_fp32_falls_back_to_float_stated(cond_w4a8_export):
    """What a processor without VNNI measures (ATen's generic int8 GEMM, 10-40x slower than fp32)."""
    kernel, arithmetic, _ = choose_int8_kernel(torch.device("cpu"), "auto")
    assert kernel in ("onednn", "torch") and arithmetic == "int8"  # decided per layer after loading
    probe = ProbeConfig(layer_timer=lambda layer, x: 30.0 if layer.arithmetic == "int8" else 1.5)
    report = load_runtime(cond_w4a8_export, probe=probe).runtime_report
    assert {r.arithmetic for r in report.fallbacks()} == {"dequantized"}
    assert all("int8 30.000 ms, float 1.500 ms; float faster" in r.note for r in report.fallbacks())
    assert load_runtime(cond_w4a8_export, int8_kernel="torch").runtime_report.fallbacks() == []


def test_an_unknown_int8_kernel_is_an_error(cond_w4a8_export):
    with pytest.raises(ValueError, match="unknown int8_kernel 'cutlass'"):
        load_runtime(cond_w4a8_export, int8_kernel="cutlass")


def test_the_kernel_compiles_for_hopper_with_int8_tensor_core_instructions():
    """The GPU path the interpreter does not take (typing of the compiled kernel, W4 unpacking,
    bf16 stores): compiled ahead of time for sm_90 without a GPU (Triton's bundled ptxas),
    with the largest tile of the autotuner's configs; its PTX must use warp-group MMA."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from saq_lightning.quant.runtime import triton_conv

    ints = ("M", "N", "C", "H", "W", "HO", "WO", "ROWS", "STRIDE_H", "STRIDE_W", "PAD_H", "PAD_W")
    consts = {"KH": 3, "KW": 3, "W4": True, "HAS_DW": True, "CENTRE_W": False, "HAS_DA": True, "HAS_BIAS": True,
              "RAW": False, "OUT_BF16": True, "BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64}
    signature = {"x_ptr": "*i8", "w_ptr": "*u8", "out_ptr": "*bf16", "dw_ptr": "*i32", "da_ptr": "*i32",
                 "col_ptr": "*i32", "sx_ptr": "*fp32", "sw_ptr": "*fp32", "bias_ptr": "*fp32",
                 **dict.fromkeys(ints, "i32"), **dict.fromkeys(consts, "constexpr")}
    source = ASTSource(triton.jit(triton_conv._igemm_int8), signature, constexprs=consts)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 128), options={"num_warps": 8, "num_stages": 3})
    ptx = compiled.asm["ptx"]
    assert "wgmma.mma_async" in ptx and ".s8.s8" in ptx
