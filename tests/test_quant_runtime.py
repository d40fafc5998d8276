"""Low-bit runtime: the integer runtime computes what the fake-quant student computes.

Tolerances: the integer accumulator is compared for *equality* with a float64 reference built
from the codes. Layer outputs (same input to both) agree to fp32 rounding (rtol 1e-5: the
student sums ``(q_x - z_x) s_x (q_w - z_w) s_w`` in fp32, the runtime scales the exact integer
sum once). Through a whole UNet that rounding can move an activation lying within fp32 rounding
of a rounding boundary to the neighbouring code, and later layers see the changed value; the
end-to-end tests check that the first differing code is one such flip (by exactly one code) and
that at most 1% of the codes differ (the cascade from one flip; measured up to 0.43%).
"""

from __future__ import annotations

import pytest
import torch
from quant_helpers import calibrated_cond_student, cond_batch, perturb_lora
from runtime_helpers import capture_inputs, layers_of, reference_accumulator

from saq_lightning.models import ModelSpec, build_model
from saq_lightning.quant import QuantLayer, export_student, load_exported
from saq_lightning.quant.runtime import RuntimeLayer, load_runtime, weight_bytes
from saq_lightning.students import load_sampling_model

SPEC = ModelSpec(kind="digits")


@pytest.fixture(scope="module")
def digits_teacher():
    return build_model(SPEC)


@pytest.fixture(scope="module")
def cond_export(tmp_path_factory):
    """The tiny SD-like cross-attention UNet (UNet2DConditionModel), W4A4 with trained LoRA."""
    torch.manual_seed(0)
    _, student = calibrated_cond_student("w4a4")
    perturb_lora(student)
    return export_student(student, tmp_path_factory.mktemp("cond") / "export")


@pytest.fixture(scope="module", params=["digits-w4a4", "digits-w8a8", "cond-w4a4"])
def case(request, digits_teacher, tmp_path_factory):
    """(export folder, UNet call): calibrated (naive PTQ) digits students of both policies, and
    the tiny cross-attention UNet."""
    if request.param.startswith("cond"):
        return request.getfixturevalue("cond_export"), cond_call()
    policy = request.param.split("-")[1]
    net = load_sampling_model(SPEC, f"naive:{policy}", calibration_samples=8, teacher=digits_teacher,
                              calibration_method="minmax")
    return export_student(net.unet, tmp_path_factory.mktemp(policy) / "export"), digits_call()


def digits_call(b: int = 6, seed: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"sample": torch.randn(b, 1, 8, 8, generator=g), "timestep": torch.tensor([0, 7, 250, 499, 800, 999])[:b],
            "class_labels": torch.arange(b) % 10}


def cond_call() -> dict[str, torch.Tensor]:
    b = cond_batch(b=3, seed=7)
    b["timestep"] = torch.tensor([3, 480, 997])
    return b


def _compare_end_to_end(folder, call):
    fake, rt = load_exported(folder), load_runtime(folder, int8_kernel="torch")
    with torch.no_grad(), capture_inputs(fake) as f_in, capture_inputs(rt) as r_in:
        y_fake, y_rt = fake(**call).sample, rt(**call).sample
    return fake, rt, f_in, r_in, y_fake, y_rt


def test_integer_accumulator_equals_the_exact_product_of_the_students_codes(case):
    folder, call = case
    _, rt, f_in, _, _, _ = _compare_end_to_end(folder, call)
    layers = layers_of(rt, RuntimeLayer)
    assert layers and all(m.arithmetic == "int8" for m in layers.values())
    with torch.no_grad(), rt.timestep_context(call["timestep"], call["sample"].shape[0]):
        for name, layer in layers.items():
            x, _ = f_in[name]  # the fake-quant student's own input to this layer
            acc, _, _ = layer.int_accumulate(x)
            assert acc.dtype == torch.int32
            assert torch.equal(acc.double(), reference_accumulator(layer, x)), name


def test_runtime_layers_give_the_fake_quant_layers_outputs_on_the_same_input(case):
    folder, call = case
    fake, rt, f_in, _, _, _ = _compare_end_to_end(folder, call)
    fake_layers, rt_layers = layers_of(fake, QuantLayer), layers_of(rt, RuntimeLayer)
    assert set(fake_layers) == set(rt_layers)
    t, b = call["timestep"], call["sample"].shape[0]
    with torch.no_grad(), fake.timestep_context(t, b), rt.timestep_context(t, b):
        for name, layer in rt_layers.items():
            x, _ = f_in[name]
            want = fake_layers[name](x)
            torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5 * want.abs().max().item(), msg=name)


def test_whole_unet_activation_codes_match_the_fake_quant_student(case):
    folder, call = case
    _, _, f_in, r_in, y_fake, y_rt = _compare_end_to_end(folder, call)
    assert set(f_in) == set(r_in)
    total = differ = 0
    first_flip = None
    for name in f_in:  # forward order
        d = (f_in[name][1] - r_in[name][1]).abs()
        if first_flip is None and d.max() > 0:
            first_flip = (name, d.max().item())
        total, differ = total + d.numel(), differ + int((d > 0).sum())
    # where codes first differ, only a boundary case moved, by one code (later layers see a
    # changed input, so their codes may move further)
    assert first_flip is None or first_flip[1] == 1, first_flip
    assert differ <= total * 1e-2, (differ, total)  # measured: 0.43% (digits W8A8)
    scale = y_fake.abs().max().item()
    if differ == 0:
        torch.testing.assert_close(y_rt, y_fake, rtol=0, atol=1e-5 * scale)
    else:
        torch.testing.assert_close(y_rt, y_fake, rtol=0, atol=0.05 * scale)


def test_w4_weights_stay_packed_two_per_byte_in_memory(cond_export):
    rt = load_runtime(cond_export, int8_kernel="torch")  # int8 on every layer (auto may hold float copies)
    layer = dict(rt.unet.named_modules())["down_blocks.0.resnets.0.conv1"]
    assert layer.packing == "int4x2" and layer.qweight.dtype == torch.uint8
    assert layer.qweight.numel() == 16 * 16 * 9 // 2
    fp_weights = 16 * 16 * 9 * 4
    assert layer.weight_bytes == 16 * 16 * 9 // 2 + 16 * 4 + 16 * 4  # codes + fp32 scales + int32 zero points
    assert layer.weight_bytes < fp_weights / 7
    assert weight_bytes(rt)["quantized"] == sum(m.weight_bytes for m in layers_of(rt, RuntimeLayer).values())


def test_weight_only_runtime_is_the_export_with_float_activations(cond_export):
    """W4A16: dequantized weights, unquantized activations: the FP op on the student's weights."""
    rt = load_runtime(cond_export, arithmetic="weight_only")
    fake = load_exported(cond_export)
    for _, m in fake.quant_layers():
        m.quant_act = False
    call = cond_call()
    with torch.no_grad():
        torch.testing.assert_close(rt(**call).sample, fake(**call).sample, rtol=1e-5, atol=1e-5)
    assert rt.runtime_report.counts()["weight_only"] == len(layers_of(rt, RuntimeLayer))


def test_report_names_every_layer_and_the_4_bit_values_in_int8_kernels(cond_export):
    rt = load_runtime(cond_export, int8_kernel="torch")
    report = rt.runtime_report
    rows = {r.name: r for r in report.layers}
    assert rows["down_blocks.0.resnets.0.conv1"].arithmetic == "int8"
    assert "no 4-bit arithmetic kernel" in rows["down_blocks.0.resnets.0.conv1"].note
    assert rows["conv_in"].bits == "w8a8" and rows["conv_in"].note == ""
    assert rows["down_blocks.1.resnets.0.conv_shortcut"].arithmetic == "fp"
    assert report.fallbacks() == []
    assert "down_blocks.0.resnets.0.conv1" in str(report)


def test_bf16_runtime_keeps_integer_tables_in_fp32_and_stays_close_to_fp32_at_w8a8(tmp_path):
    """bf16 activations (GPU setting) feed the same integer kernels; at W8A8 the output stays
    within 10% of the fp32 runtime's (bf16 rounding before quantization moves some codes)."""
    _, student = calibrated_cond_student("w8a8")
    folder = export_student(student, tmp_path / "w8a8")
    rt = load_runtime(folder, dtype=torch.bfloat16, int8_kernel="torch")
    call = cond_call()
    call["sample"], call["encoder_hidden_states"] = call["sample"].bfloat16(), call["encoder_hidden_states"].bfloat16()
    layer = dict(rt.unet.named_modules())["down_blocks.0.resnets.0.conv1"]
    assert layer.w_scale.dtype == torch.float32 and layer.a_quant.step.dtype == torch.float32
    assert rt.unet.conv_norm_out.weight.dtype == torch.bfloat16
    with torch.no_grad():
        out = rt(**call).sample
        ref = load_runtime(folder, int8_kernel="torch")(**cond_call()).sample
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
