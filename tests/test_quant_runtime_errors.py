"""Bad input to the low-bit runtime: each gets an error naming the file or layer, or a stated fallback."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_unet2d
from quant_helpers import calibrated_cond_student, cond_batch

from saq_lightning.quant import (
    QuantPolicy,
    calibrate,
    export_student,
    load_exported,
    quantize_model,
)
from saq_lightning.quant.runtime import kernels, load_runtime, read_config
from saq_lightning.quant.runtime import loader as runtime_loader


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    torch.manual_seed(0)
    _, student = calibrated_cond_student("w4a4")
    return export_student(student, tmp_path_factory.mktemp("w4a4") / "export")


def _copy(export, tmp_path):
    import shutil

    return shutil.copytree(export, tmp_path / "copy")


def _edit_tensors(folder, edit):
    from safetensors.torch import load_file, save_file

    path = folder / "weights.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def test_export_writes_a_diffusers_style_config_json(export):
    config = read_config(export)
    assert config["_class_name"] == "UNet2DConditionModel" and config["cross_attention_dim"] == 16
    assert config["quantization_config"] == {**config["quantization_config"], "quant_method": "saq_lightning.quant/1",
                                             "policy": "w4a4", "weights": "weights.safetensors"}


def test_an_export_without_config_json_still_loads(export, tmp_path):
    folder = _copy(export, tmp_path)
    (folder / "config.json").unlink()
    rt = load_runtime(folder, int8_kernel="torch")
    assert rt.runtime_report.counts()["int8"] > 0


def test_an_export_of_another_architecture_names_the_folder_and_the_modules(export, tmp_path):
    with pytest.raises(ValueError, match=r"export.*does not fit this model: no module"):
        load_runtime(export, model=make_tiny_unet2d())


def test_a_config_json_of_another_policy_names_the_file(export, tmp_path):
    folder = _copy(export, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["policy"] = "w8a8"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: quantization_config.policy 'w8a8' but manifest.json"):
        load_runtime(folder)


def test_a_plain_diffusers_config_json_is_not_taken_for_an_export(export, tmp_path):
    folder = _copy(export, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="config.json: no quantization_config"):
        load_runtime(folder)


def test_codes_of_another_bit_width_name_the_layer(export, tmp_path):
    """A manifest saying 4 bits over 8-bit codes (files from two policies)."""
    folder = _copy(export, tmp_path)
    key = "down_blocks.0.resnets.0.conv1.qweight"
    _edit_tensors(folder, lambda t: t.__setitem__(key, torch.zeros(16 * 16 * 9, dtype=torch.uint8)))
    with pytest.raises(ValueError, match=r"layer 'down_blocks.0.resnets.0.conv1': qweight holds 2304 bytes, 1152"):
        load_runtime(folder)


def test_a_missing_scale_tensor_names_the_file_layer_and_tensor(export, tmp_path):
    folder = _copy(export, tmp_path)
    _edit_tensors(folder, lambda t: t.pop("up_blocks.1.resnets.0.conv2.w_scale"))
    with pytest.raises(ValueError, match=r"weights.safetensors: layer 'up_blocks.1.resnets.0.conv2' has no tensor "
                                         r"'up_blocks.1.resnets.0.conv2.w_scale'"):
        load_runtime(folder)


def test_an_activation_table_of_the_wrong_length_is_an_error(export, tmp_path):
    folder = _copy(export, tmp_path)
    _edit_tensors(folder, lambda t: t.__setitem__("conv_in.a_scale", torch.ones(10)))
    with pytest.raises(ValueError, match=r"layer 'conv_in': a_scale has 10 entries, 100 expected"):
        load_runtime(folder)


def test_int4_arithmetic_is_refused_with_the_int8_alternative(export):
    with pytest.raises(ValueError, match="no 4-bit integer GEMM.*use arithmetic='int8'"):
        load_runtime(export, arithmetic="int4")


def test_a_device_without_int8_gemm_is_an_error_naming_the_layer(export, monkeypatch):
    def no_int_mm(a, b):
        raise RuntimeError("_int_mm not implemented for this backend")

    monkeypatch.setattr(runtime_loader, "onednn_unavailable", lambda: "no oneDNN here (test)")
    kernels.probe_int8_gemm.cache_clear()
    monkeypatch.setattr(torch, "_int_mm", no_int_mm)
    try:
        with pytest.raises(RuntimeError, match=r"int8 arithmetic requested for layer 'conv_in'.*torch._int_mm is not "
                                               r"available on cpu.*allow_fallback=True"):
            load_runtime(export)
    finally:
        kernels.probe_int8_gemm.cache_clear()


def test_the_stated_fallback_is_exact_float64_emulation(export, monkeypatch):
    reference = load_runtime(export, int8_kernel="torch")
    call = cond_batch(b=2, seed=4)
    with torch.no_grad():
        want = reference(**call).sample

    def no_int_mm(a, b):
        raise RuntimeError("_int_mm not implemented for this backend")

    monkeypatch.setattr(runtime_loader, "onednn_unavailable", lambda: "no oneDNN here (test)")
    kernels.probe_int8_gemm.cache_clear()
    monkeypatch.setattr(torch, "_int_mm", no_int_mm)
    try:
        rt = load_runtime(export, allow_fallback=True)
        with torch.no_grad():
            got = rt(**call).sample
    finally:
        kernels.probe_int8_gemm.cache_clear()
    assert torch.equal(got, want)  # the same integers, the same dequantization
    assert rt.runtime_report.counts()["emulated"] > 0 and "fallback" in rt.runtime_report.notes[0]
    assert all(r.arithmetic == "emulated" for r in rt.runtime_report.fallbacks())


class _Convs(torch.nn.Module):
    """Conv shapes the UNets' default policies do not quantize: strided, 1x1, grouped."""

    def __init__(self) -> None:
        super().__init__()
        self.strided = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.pointwise = torch.nn.Conv2d(8, 8, 1)
        self.grouped = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2)

    def forward(self, x, t):
        return self.grouped(self.pointwise(self.strided(x)))


@pytest.mark.parametrize("policy", ["w8a8", "w4a4"])
def test_strided_and_pointwise_convs_run_int8_and_a_grouped_conv_falls_back_stated(policy, tmp_path):
    bits = int(policy[1])
    model = _Convs().eval()
    pol = QuantPolicy(name=policy, weight_bits=bits, act_bits=bits, rules=[], fp_patterns=[], lora_rank=0)
    student, _ = quantize_model(model, pol, warn=False)
    x = torch.randn(3, 4, 9, 9)
    t = torch.tensor([10, 500, 990])
    calibrate(student, [{"sample": x, "timestep": t}], act_method="minmax", weight_method="minmax")
    folder = export_student(student.eval(), tmp_path / "convs")
    rt = load_runtime(folder, model=_Convs(), int8_kernel="torch")
    rows = {r.name: r for r in rt.runtime_report.layers}
    assert rows["strided"].arithmetic == rows["pointwise"].arithmetic == "int8"
    assert rows["grouped"].arithmetic == "fake" and "grouped/dilated" in rows["grouped"].note
    assert [r.name for r in rt.runtime_report.fallbacks()] == ["grouped"]
    fake = load_exported(folder, model=_Convs())
    with torch.no_grad():
        want = fake(x, t)
        torch.testing.assert_close(rt(x, t), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
