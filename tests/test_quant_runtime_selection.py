"""The CPU's per-layer choice between int8 and float (``int8_kernel="auto"``), and the float path
that holds the weights dequantized once.

The choice is driven by measurements; the tests inject the timers (``ProbeConfig.layer_timer``,
``ProbeConfig.model_timer``), so what is chosen is decided here, not by this machine's speed.
"""

from __future__ import annotations

import pytest
import torch
from quant_helpers import calibrated_cond_student, cond_batch
from runtime_helpers import layers_of

from saq_lightning.quant import export_student, load_exported
from saq_lightning.quant.runtime import ProbeConfig, RuntimeLayer, load_runtime, weight_bytes
from saq_lightning.quant.runtime.onednn import onednn_unavailable


@pytest.fixture(scope="module")
def w8a8_export(tmp_path_factory):
    """The tiny cross-attention UNet, W8A8 (int8 codes: the GEMM layout is a copy held at load)."""
    torch.manual_seed(0)
    _, student = calibrated_cond_student("w8a8")
    return export_student(student, tmp_path_factory.mktemp("w8a8") / "export")


def _int8_wins_on_convs(layer, x):
    """Convs: int8 1 ms, float 2 ms; linears: int8 2 ms, float 1 ms."""
    int8_faster = layer.kind == "Conv2d"
    return (1.0 if int8_faster else 2.0) if layer.arithmetic == "int8" else (2.0 if int8_faster else 1.0)


def _mix_is(mix_ms: float, all_float_ms: float):
    def timer(model, example):
        any_int8 = any(m.arithmetic == "int8" for m in layers_of(model, RuntimeLayer).values())
        return mix_ms if any_int8 else all_float_ms

    return timer


def test_each_layer_runs_the_arithmetic_its_own_measurement_favours(w8a8_export):
    probe = ProbeConfig(layer_timer=_int8_wins_on_convs, model_timer=_mix_is(1.0, 2.0))
    rt = load_runtime(w8a8_export, probe=probe)
    layers = layers_of(rt.unet, RuntimeLayer)
    assert {m.arithmetic for m in layers.values() if m.kind == "Conv2d"} == {"int8"}
    assert {m.arithmetic for m in layers.values() if m.kind == "Linear"} == {"dequantized"}
    rows = {r.name: r for r in rt.runtime_report.layers}
    conv = next(n for n, m in layers.items() if m.kind == "Conv2d")
    linear = next(n for n, m in layers.items() if m.kind == "Linear")
    kernel = "torch._int_mm" if onednn_unavailable() else "onednn"  # the CPU's int8 kernel (auto)
    assert "int8 1.000 ms, float 2.000 ms" in rows[conv].note and rows[conv].kernel.startswith(kernel)
    assert rows[linear].note.endswith("int8 2.000 ms, float 1.000 ms; float faster: weights dequantized once")
    assert (rows[conv].int8_ms, rows[conv].float_ms) == (1.0, 2.0)
    n_conv = sum(m.kind == "Conv2d" for m in layers.values())
    notes = "\n".join(rt.runtime_report.notes)
    assert f"int8 on {n_conv} layers, float (dequantized once) on {len(layers) - n_conv}" in notes
    assert "whole model: chosen mix 1.0 ms vs all-float 2.0 ms, all-int8 1.0 ms (mix 2.00x the all-float model)" in notes


def test_each_layer_is_measured_on_the_input_it_receives_at_the_requested_batch(w8a8_export):
    seen = {}

    def timer(layer, x):
        seen[layer.name] = tuple(x.shape)
        return 1.0 if layer.arithmetic == "int8" else 2.0

    call = cond_batch(b=3, seed=0)
    example = {"sample": call["sample"], "timestep": call["timestep"],
               "encoder_hidden_states": call["encoder_hidden_states"]}
    rt = load_runtime(w8a8_export, probe=ProbeConfig(example=example, layer_timer=timer,
                                                     model_timer=_mix_is(1.0, 2.0)))
    conv_in = rt.unet.conv_in
    assert seen["conv_in"] == tuple(call["sample"].shape)
    assert {shape[0] for shape in seen.values()} == {3}
    assert set(seen) == set(layers_of(rt.unet, RuntimeLayer))  # every quantized layer measured
    row = next(r for r in rt.runtime_report.layers if r.name == "conv_in")
    assert f"measured at input {list(call['sample'].shape)}" in row.note and conv_in.arithmetic == "int8"


def test_a_mix_slower_than_the_all_float_model_runs_float_everywhere_stated(w8a8_export):
    probe = ProbeConfig(layer_timer=_int8_wins_on_convs, model_timer=_mix_is(3.0, 2.0))
    rt = load_runtime(w8a8_export, probe=probe)
    assert {m.arithmetic for m in layers_of(rt.unet, RuntimeLayer).values()} == {"dequantized"}
    notes = "\n".join(rt.runtime_report.notes)
    assert "chosen mix 3.0 ms vs all-float 2.0 ms, all-int8 3.0 ms (mix slower than all-float: every layer runs float)" in notes
    conv = next(r for r in rt.runtime_report.layers if r.name == "conv_in")
    assert conv.note.endswith("int8 faster here, but the whole mix was slower than all-float")


def test_all_int8_faster_than_the_chosen_mix_runs_int8_everywhere_stated(w8a8_export):
    """Per-layer timings of single calls mislead on a busy machine: the whole model decides."""
    def timer(model, example):
        arith = {m.arithmetic for m in layers_of(model, RuntimeLayer).values()}
        return {frozenset({"int8"}): 1.0, frozenset({"dequantized"}): 3.0}.get(frozenset(arith), 2.0)

    rt = load_runtime(w8a8_export, probe=ProbeConfig(layer_timer=_int8_wins_on_convs, model_timer=timer))
    layers = layers_of(rt.unet, RuntimeLayer)
    assert {m.arithmetic for m in layers.values()} == {"int8"}
    notes = "\n".join(rt.runtime_report.notes)
    assert "chosen mix 2.0 ms vs all-float 3.0 ms, all-int8 1.0 ms (all-int8 fastest: every layer runs int8)" in notes
    rows = {r.name: r for r in rt.runtime_report.layers}
    linear = next(n for n, m in layers.items() if m.kind == "Linear")
    assert rows[linear].note.endswith("float faster here, but all-int8 was the fastest whole model")
    assert set(rt.runtime_report.choices().values()) == {"int8"}


def test_a_previous_choice_is_reused_without_measuring(w8a8_export):
    first = load_runtime(w8a8_export, probe=ProbeConfig(layer_timer=_int8_wins_on_convs,
                                                        model_timer=_mix_is(1.0, 2.0)))
    choices = first.runtime_report.choices()

    def never(*_):
        raise AssertionError("measured although choices were given")

    again = load_runtime(w8a8_export, probe=ProbeConfig(choices=choices, layer_timer=never, model_timer=never))
    assert again.runtime_report.choices() == choices
    assert "per-layer choice reused from choices= (not measured)" in "\n".join(again.runtime_report.notes)


def test_a_choice_naming_an_unknown_arithmetic_is_an_error_naming_the_layer(w8a8_export):
    with pytest.raises(ValueError, match=r"choices\['conv_in'\] = 'int4': expected one of \('int8', 'dequantized'\)"):
        load_runtime(w8a8_export, probe=ProbeConfig(choices={"conv_in": "int4"}))


def test_int8_kernel_torch_runs_int8_on_every_layer_without_measuring(w8a8_export):
    rt = load_runtime(w8a8_export, int8_kernel="torch")
    assert {m.arithmetic for m in layers_of(rt.unet, RuntimeLayer).values()} == {"int8"}
    assert not any(n.startswith("per-layer choice") for n in rt.runtime_report.notes)


def _all_float(layer, x):
    return 2.0 if layer.arithmetic == "int8" else 1.0


def test_a_float_layer_computes_the_fake_quant_layer_to_the_last_bit(w8a8_export):
    """Same fake-quantized input values, same dequantized fp32 weight, same float op: tolerance 0."""
    rt = load_runtime(w8a8_export, int8_kernel="torch")
    call = cond_batch(b=2, seed=5)
    for name in ("conv_in", "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"):
        layer = rt.unet.get_submodule(name)
        x = call["sample"] if name == "conv_in" else call["encoder_hidden_states"]
        with torch.no_grad(), rt.timestep_context(call["timestep"], 2):
            layer.set_arithmetic("fake")
            want = layer(x)
            layer.set_arithmetic("dequantized")
            got = layer(x)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_the_all_float_runtime_gives_the_fake_quant_students_output(w8a8_export):
    """What a CPU where int8 always loses runs: the student's computation (not W8A16), to fp32
    rounding (tolerance 1e-5 of the output's range)."""
    rt = load_runtime(w8a8_export, probe=ProbeConfig(layer_timer=_all_float))
    student = load_exported(w8a8_export)
    call = cond_batch(b=2, seed=5)
    with torch.no_grad():
        want = student(**call).sample
        torch.testing.assert_close(rt(**call).sample, want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_the_float_path_holds_fp32_weights_and_the_report_states_their_bytes(w8a8_export):
    rt = load_runtime(w8a8_export, probe=ProbeConfig(layer_timer=_all_float))
    layers = layers_of(rt.unet, RuntimeLayer)
    conv = layers["conv_in"]
    numel = conv.float_weight.numel()
    assert conv.float_weight.dtype == torch.float32 and conv.gemm_weight is None
    assert conv.weight_bytes == conv.packed_bytes + 4 * numel
    held = sum(4 * m.float_weight.numel() for m in layers.values())
    packed = sum(m.packed_bytes for m in layers.values())
    assert weight_bytes(rt)["quantized"] == held + packed
    notes = "\n".join(rt.runtime_report.notes)
    assert (f"float layers hold their weights dequantized once: {held / 2**20:.2f} MiB fp32 where the packed codes "
            f"take {packed / 2**20:.2f} MiB ({len(layers)} layers)") in notes
    row = next(r for r in rt.runtime_report.layers if r.name == "conv_in")
    assert row.weight_storage == "int8+fp32"
