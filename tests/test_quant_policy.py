"""Policy: presets quantize exactly the modules they say, by name patterns; bad policies fail clearly."""

from __future__ import annotations

import json
import warnings

import pytest
from conftest import make_tiny_unet2d, make_tiny_unet2d_condition
from torch import nn

from saq_lightning.quant import LayerRule, QuantPolicy, preset, quantize_model

FIRST_LAST = {"conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"}


def _conv_linear_names(model: nn.Module) -> set[str]:
    return {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _plan(student) -> dict[str, tuple[int, int, int]]:
    return {
        n: (m.w_quant.bits, m.a_quant.bits, m.lora.rank if m.lora is not None else 0)
        for n, m in student.quant_layers()
    }


@pytest.mark.parametrize("name,w,a", [("w8a8", 8, 8), ("w4a8", 4, 8), ("w4a4", 4, 4)])
def test_preset_on_unet2d_condition_quantizes_exactly_the_modules_it_says(name, w, a):
    teacher = make_tiny_unet2d_condition()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a preset matches every one of its patterns on this layout
        student, report = quantize_model(teacher, name)
    every = _conv_linear_names(teacher)
    fp = {n for n in every if n.endswith(".conv_shortcut") or ".downsamplers." in n}
    assert fp == {
        "down_blocks.0.downsamplers.0.conv", "down_blocks.1.resnets.0.conv_shortcut",
        "up_blocks.0.resnets.0.conv_shortcut", "up_blocks.0.resnets.1.conv_shortcut",
        "up_blocks.1.resnets.0.conv_shortcut", "up_blocks.1.resnets.1.conv_shortcut",
    }
    plan = _plan(student)
    assert set(plan) == every - fp
    assert {n for n, p in plan.items() if p == (8, 8, 0)} == FIRST_LAST  # first/last: W8A8, no LoRA
    assert all(p == (w, a, 32) for n, p in plan.items() if n not in FIRST_LAST)
    # attention projections, feed-forward, time_emb_proj, upsampler conv are all in the plan
    assert "mid_block.attentions.0.transformer_blocks.0.attn2.to_k" in plan
    assert "up_blocks.0.upsamplers.0.conv" in plan
    assert "down_blocks.0.resnets.0.time_emb_proj" in plan
    for n in fp:  # FP-kept modules are the original objects, untouched
        assert type(student.unet.get_submodule(n)) is nn.Conv2d
    assert {r.module for r in report.rows if r.weight_bits is None} == fp


def test_preset_on_class_conditional_unet2d_keeps_the_class_embedding_fp():
    teacher = make_tiny_unet2d()
    student, _ = quantize_model(teacher, "w4a8")
    assert isinstance(student.unet.class_embedding, nn.Embedding)
    assert "down_blocks.1.attentions.0.to_q" in _plan(student)


def test_shortcut_and_downsample_convs_are_configurable():
    student, _ = quantize_model(make_tiny_unet2d_condition(), preset("w4a4", fp_patterns=[]))
    plan = _plan(student)
    assert plan["down_blocks.1.resnets.0.conv_shortcut"] == (4, 4, 32)
    assert plan["down_blocks.0.downsamplers.0.conv"] == (4, 4, 32)


def test_rules_apply_in_order_and_later_rules_win():
    policy = preset("w4a4", rules=[LayerRule("*attn*", act_bits=8), LayerRule("*.to_q", lora_rank=4)])
    student, _ = quantize_model(make_tiny_unet2d_condition(), policy)
    plan = _plan(student)
    assert plan["mid_block.attentions.0.transformer_blocks.0.attn1.to_q"] == (4, 8, 4)
    assert plan["mid_block.attentions.0.transformer_blocks.0.attn1.to_k"] == (4, 8, 32)
    assert plan["conv_in"] == (4, 4, 32)  # default rules replaced: conv_in is no longer W8A8


def test_policy_is_plain_data_that_round_trips_through_json():
    policy = preset("w4a8", rules=[LayerRule("conv_in", 8, 8, 0)], n_buckets=50)
    data = json.loads(json.dumps(policy.to_dict()))
    assert data["rules"][0] == {"pattern": "conv_in", "weight_bits": 8, "act_bits": 8, "lora_rank": 0}
    assert QuantPolicy.from_dict(data) == policy


def test_a_pattern_that_matches_nothing_warns_with_the_pattern():
    policy = preset("w4a4", fp_patterns=["*.conv_shortcut", "*.no_such_layer"])
    with pytest.warns(UserWarning, match=r"'\*\.no_such_layer'"):
        _, report = quantize_model(make_tiny_unet2d_condition(), policy)
    assert any("no_such_layer" in u for u in report.unmatched_patterns)


@pytest.mark.parametrize("field,bits", [("weight_bits", 1), ("act_bits", 16), ("weight_bits", 3.5)])
def test_unsupported_bit_width_in_a_policy_is_rejected(field, bits):
    with pytest.raises(ValueError, match=f"unsupported .*bit width {bits}"):
        preset("w4a4", **{field: bits})


def test_unsupported_bit_width_in_a_rule_is_rejected():
    with pytest.raises(ValueError, match=r"rule 'conv_in'.*12"):
        preset("w4a4", rules=[LayerRule("conv_in", weight_bits=12)])


def test_a_module_type_the_policy_cannot_wrap_is_rejected():
    with pytest.raises(TypeError, match="cannot wrap module type 'ConvTranspose2d'"):
        preset("w4a4", types=["Conv2d", "ConvTranspose2d"])
    teacher = make_tiny_unet2d()  # class_embedding is an nn.Embedding
    with pytest.raises(TypeError, match="cannot wrap module 'class_embedding' of type Embedding"):
        quantize_model(teacher, preset("w4a4", rules=[LayerRule("class_embedding", weight_bits=8)]))
    assert not any(p.requires_grad is False for p in teacher.parameters())  # refused before touching it


def test_unknown_preset_and_unknown_fields_are_rejected():
    with pytest.raises(ValueError, match="unknown quantization preset 'w2a2'"):
        preset("w2a2")
    with pytest.raises(ValueError, match="unknown QuantPolicy fields: \\['bitz'\\]"):
        QuantPolicy.from_dict({"bitz": 4})


def test_report_lists_modules_bits_lora_and_parameter_counts():
    teacher = make_tiny_unet2d_condition()
    student, report = quantize_model(teacher, "w4a4")
    text = str(report)
    assert "conv_in" in text and "fp" in text and "trainable" in text
    row = next(r for r in report.rows if r.module == "down_blocks.0.resnets.0.conv1")
    assert (row.weight_bits, row.act_bits, row.lora_rank) == (4, 4, 32)
    assert row.base_params == 16 * 16 * 9 + 16
    assert row.lora_params == 32 * 16 * 9 + 16 * 32
    assert row.quant_params == 2 * 16 + 2 * 100  # per-channel (step, zp) + 100-bucket table
    assert report.trainable_params == sum(p.numel() for p in student.parameters() if p.requires_grad)
