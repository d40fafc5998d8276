"""Export to integer weights + reload, and trainable-only state dicts."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_unet2d_condition
from quant_helpers import (
    calibrated_class_student,
    calibrated_cond_student,
    class_batch,
    cond_batch,
    perturb_lora,
)

from saq_lightning.quant import (
    export_student,
    load_exported,
    load_trainable_state_dict,
    pack_codes,
    preset,
    quantize_model,
    trainable_state_dict,
    unpack_codes,
)
from saq_lightning.quant.export import ExportMismatchError


@pytest.mark.parametrize("n", [1, 7, 64])
@pytest.mark.parametrize("bits,qmin", [(2, 0), (4, 0), (4, -8)])
def test_low_bit_codes_pack_two_per_byte_and_round_trip(n, bits, qmin):
    qmax = qmin + 2**bits - 1
    codes = torch.randint(qmin, qmax + 1, (n,), dtype=torch.int16)
    stored, packing = pack_codes(codes, bits, qmin)
    assert packing == "int4x2" and stored.dtype == torch.uint8 and stored.numel() == (n + 1) // 2
    assert torch.equal(unpack_codes(stored, packing, (n,), qmin), codes)


@pytest.mark.parametrize("qmin,dtype", [(-128, torch.int8), (0, torch.uint8)])
def test_8_bit_codes_are_stored_one_per_byte(qmin, dtype):
    codes = torch.arange(qmin, qmin + 256, dtype=torch.int16)
    stored, packing = pack_codes(codes, 8, qmin)
    assert stored.dtype == dtype
    assert torch.equal(unpack_codes(stored, packing, (256,), qmin), codes)


def _trained_cond_student():
    teacher, student = calibrated_cond_student()
    perturb_lora(student)  # LoRA must be merged into the exported integer weight
    return teacher, student


def test_reloaded_integer_student_equals_the_fake_quant_student_bit_for_bit(tmp_path):
    _, student = _trained_cond_student()
    folder = export_student(student, tmp_path / "w4a4")
    reloaded = load_exported(folder)
    b = cond_batch(b=3, seed=7)
    b["timestep"] = torch.tensor([3, 480, 997])
    with torch.no_grad():
        assert torch.equal(reloaded(**b).sample, student.eval()(**b).sample)
    layer = dict(reloaded.quant_layers())["down_blocks.0.resnets.0.conv1"]
    assert layer.integer and layer.lora is None and "weight" not in layer.base._parameters
    assert not any(p.requires_grad for p in reloaded.parameters())


def test_export_writes_packed_int4_weights_tables_and_a_manifest(tmp_path):
    from safetensors.torch import load_file

    _, student = _trained_cond_student()
    folder = export_student(student, tmp_path / "out")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["policy"]["name"] == "w4a4" and manifest["model"]["class"] == "UNet2DConditionModel"
    entry = manifest["layers"]["down_blocks.0.resnets.0.conv1"]
    assert entry == {**entry, "weight_bits": 4, "act_bits": 4, "packing": "int4x2", "lora_rank_merged": 32}
    assert manifest["layers"]["conv_in"]["packing"] == "uint8"
    t = load_file(str(folder / "weights.safetensors"))
    assert t["down_blocks.0.resnets.0.conv1.qweight"].numel() == 16 * 16 * 9 // 2  # two codes per byte
    assert t["down_blocks.0.resnets.0.conv1.w_scale"].shape == (16,)  # per output channel
    assert t["down_blocks.0.resnets.0.conv1.a_scale"].shape == (100,)  # per timestep bucket
    assert t["down_blocks.1.resnets.0.conv_shortcut.weight"].dtype == torch.float32  # FP-kept layer
    assert not any(k.endswith((".lora.A", ".lora.B", "base.weight")) for k in t)  # LoRA merged, no FP copy


def test_attention_matmul_quantization_round_trips_through_export(tmp_path):
    _, student = calibrated_class_student(preset("w4a8", quantize_attention_matmuls=True))
    perturb_lora(student)
    reloaded = load_exported(export_student(student, tmp_path / "attn"))
    b = class_batch(b=2, seed=5)
    with torch.no_grad():
        assert torch.equal(reloaded(**b).sample, student.eval()(**b).sample)


def test_export_refuses_an_existing_folder_and_leaves_it_untouched(tmp_path):
    _, student = _trained_cond_student()
    folder = tmp_path / "exists"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        export_student(student, folder)
    with pytest.raises(FileExistsError, match="not empty and holds no"):
        export_student(student, folder, overwrite=True)  # not a previous export: still refused
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]
    assert (folder / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["exists"]  # no temporary left behind


def test_export_overwrites_a_previous_export_only_when_asked(tmp_path):
    _, student = _trained_cond_student()
    folder = export_student(student, tmp_path / "w4a4")
    before = (folder / "weights.safetensors").read_bytes()
    with pytest.raises(FileExistsError):
        export_student(student, folder)
    perturb_lora(student, seed=11)
    export_student(student, folder, overwrite=True)
    assert (folder / "weights.safetensors").read_bytes() != before


def test_export_of_an_uncalibrated_student_is_refused(tmp_path):
    student, _ = quantize_model(make_tiny_unet2d_condition(), "w4a4")
    with pytest.raises(RuntimeError, match="not initialised"):
        export_student(student, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# -- trainable-only state dicts --------------------------------------------------------------------


def test_trainable_state_dict_holds_only_lora_and_quantizer_state_and_round_trips():
    _, student = _trained_cond_student()
    sd = trainable_state_dict(student)
    assert {k.rsplit(".", 1)[-1] for k in sd} == {"A", "B", "step", "zero_point", "initialised", "spec", "calibrated"}
    torch.manual_seed(0)  # the same teacher weights as the student's (built under the same seed)
    fresh, _ = quantize_model(make_tiny_unet2d_condition().eval(), "w4a4")
    load_trainable_state_dict(fresh, sd)
    b = cond_batch()
    with torch.no_grad():
        assert torch.equal(fresh(**b).sample, student(**b).sample)


def test_loading_a_state_dict_from_another_policy_or_architecture_fails_clearly():
    _, student = _trained_cond_student()
    sd = trainable_state_dict(student)
    other_bits, _ = quantize_model(make_tiny_unet2d_condition(), preset("w4a8"))
    with pytest.raises(ValueError, match=r"another architecture or quant policy.*\[bits, symmetric"):
        load_trainable_state_dict(other_bits, sd)
    other_arch, _ = quantize_model(make_tiny_unet2d_condition(cross_attention_dim=8), "w4a4")
    before = {k: v.clone() for k, v in trainable_state_dict(other_arch).items()}
    with pytest.raises(ValueError, match="shape"):
        load_trainable_state_dict(other_arch, sd)
    after = trainable_state_dict(other_arch)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing loaded


@pytest.mark.parametrize(
    "policy",
    [preset("w8a8", weight_symmetric=True, act_symmetric=True), preset("w4a8", weight_per_channel=False),
     preset("w4a4", weight_bits=3, act_bits=6)],
    ids=["w8a8-symmetric", "w4a8-per-tensor", "w3a6"],
)
def test_other_quantizer_settings_reload_bit_for_bit(tmp_path, policy):
    _, student = calibrated_cond_student(policy)
    perturb_lora(student)
    folder = export_student(student, tmp_path / "x")
    layer = json.loads((folder / "manifest.json").read_text())["layers"]["mid_block.resnets.0.conv1"]
    assert layer["packing"] == {8: "int8", 4: "int4x2", 3: "int4x2"}[policy.weight_bits]
    reloaded = load_exported(folder)
    b = cond_batch(b=2, seed=9)
    with torch.no_grad():
        assert torch.equal(reloaded(**b).sample, student.eval()(**b).sample)


# -- what a load refuses: files of two exports mixed, bits changed, tables of the wrong size -----


def test_weights_of_another_export_of_the_same_shapes_are_refused_by_their_digest(tmp_path):
    _, student = _trained_cond_student()
    first = export_student(student, tmp_path / "first")
    perturb_lora(student, seed=11)  # another training: same shapes, other codes
    second = export_student(student, tmp_path / "second")
    (first / "weights.safetensors").write_bytes((second / "weights.safetensors").read_bytes())
    with pytest.raises(ExportMismatchError, match=r"first/weights\.safetensors: its SHA-256 .*tensors_sha256"):
        load_exported(first)
    assert load_exported(second) is not None  # the untouched export loads


def test_w8a8_weights_under_a_w4a4_manifest_are_refused(tmp_path):
    _, w4a4 = calibrated_cond_student("w4a4")
    _, w8a8 = calibrated_cond_student("w8a8")
    folder = export_student(w4a4, tmp_path / "w4a4")
    other = export_student(w8a8, tmp_path / "w8a8")
    (folder / "weights.safetensors").write_bytes((other / "weights.safetensors").read_bytes())
    with pytest.raises(ExportMismatchError, match="weights.safetensors: its SHA-256"):
        load_exported(folder)


def test_a_changed_per_layer_bit_width_is_refused_naming_the_layer_and_field(tmp_path):
    _, student = _trained_cond_student()
    folder = export_student(student, tmp_path / "w4a4")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["layers"]["mid_block.resnets.0.conv1"]["act_bits"] = 8
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportMismatchError,
                       match=r"manifest.json: layers.mid_block.resnets.0.conv1.act_bits is 8, the policy 'w4a4' gives 4"):
        load_exported(folder)


def test_a_scale_table_of_the_wrong_size_names_the_file_tensor_and_layer(tmp_path):
    from safetensors.torch import load_file, save_file

    _, student = _trained_cond_student()
    folder = export_student(student, tmp_path / "w4a4")
    tensors = load_file(str(folder / "weights.safetensors"))
    key = "mid_block.resnets.0.conv1.w_scale"
    tensors[key] = tensors[key][:-1].contiguous()
    save_file(tensors, str(folder / "weights.safetensors"), metadata={"format": "saq_lightning.quant/1"})
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["tensors_sha256"]  # a hand-made export (or one written before digests): the size check names it
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportMismatchError, match=r"weights.safetensors: tensor 'mid_block.resnets.0.conv1.w_scale' holds"):
        load_exported(folder)
