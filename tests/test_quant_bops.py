"""What a policy covers: per-layer MACs, attention matmuls apart, BOPs and per-precision shares.

The reference counts come from ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per MAC),
which counts the aten convolution/matmul calls themselves, independently of the module hooks in
``quant/macs.py``. Attention runs through diffusers' plain ``AttnProcessor`` there (explicit
``baddbmm``/``bmm``, which the flop counter sees; the fused SDPA kernel on CPU it does not).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from saq_lightning.quant import count_macs, quantize_model

BATCH = 2


def tiny_inputs():
    x = torch.randn(BATCH, 1, 8, 8)
    return x, torch.tensor([10, 500]), torch.tensor([1, 2])


def flop_reference(unet):
    """Per-module FLOPs of one call (keys ``UNet2DModel.<name>``) and the total, plain attention."""
    from diffusers.models.attention_processor import Attention, AttnProcessor

    for m in unet.modules():
        if isinstance(m, Attention):
            m.set_processor(AttnProcessor())
    x, t, y = tiny_inputs()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, t, class_labels=y)
    return counter.get_flop_counts(), counter.get_total_flops()


@pytest.fixture
def counted(tiny_unet):
    x, t, y = tiny_inputs()
    counts = count_macs(tiny_unet, lambda: tiny_unet(x, t, class_labels=y))
    return tiny_unet, counts


def test_every_conv_and_linear_has_the_macs_the_flop_counter_sees(counted):
    unet, counts = counted
    per_module, _ = flop_reference(unet)
    layers = [n for n, m in unet.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    assert sorted(counts.layers) == sorted(layers)
    for name in layers:
        flops = sum(per_module[f"{type(unet).__name__}.{name}"].values())
        assert counts.layers[name] == flops // 2 // BATCH, name  # exact integers


def test_conv_in_macs_are_the_hand_count(counted):
    _, counts = counted
    assert counts.layers["conv_in"] == 16 * 8 * 8 * (1 * 3 * 3)  # out ch x H x W x (in ch x 3 x 3)


def test_attention_matmuls_are_counted_apart_and_complete_the_total(counted):
    unet, counts = counted
    _, total = flop_reference(unet)
    # every attention of the tiny UNet runs on its second level (the last down block does not
    # downsample): 4x4 = 16 tokens of 32 channels, 2 matmuls of 16 x 16 x 32 MACs
    names = ("down_blocks.1.attentions.0", "mid_block.attentions.0", "up_blocks.0.attentions.0",
             "up_blocks.0.attentions.1")
    assert counts.attention == dict.fromkeys(names, 2 * 16 * 16 * 32)
    assert counts.layer_total + counts.attention_total == total // 2 // BATCH


def test_bops_charge_each_layer_its_weight_times_activation_bits_and_fp_32_by_32(counted):
    unet, counts = counted
    _, report = quantize_model(unet, "w4a4")
    report = report.with_macs(counts)
    bits = {r.module: (r.weight_bits, r.act_bits) for r in report.rows}
    assert bits["conv_in"] == (8, 8) and bits["down_blocks.0.resnets.0.conv1"] == (4, 4)
    assert bits["down_blocks.1.resnets.0.conv_shortcut"] == (None, None)  # the preset keeps it FP
    width = {None: 32, 4: 4, 8: 8}
    expected = sum(counts.layers[name] * width[w] * width[a] for name, (w, a) in bits.items())
    assert report.bops == expected
    assert report.fp_bops == counts.layer_total * 32 * 32
    assert report.attention_macs == counts.attention_total and report.attention_bits is None


def test_precision_shares_add_up_and_split_parameters_macs_and_bops(counted):
    unet, counts = counted
    _, report = quantize_model(unet, "w4a4")
    shares = {(s.weight_bits, s.act_bits): s for s in report.with_macs(counts).precision_shares()}
    assert set(shares) == {(4, 4), (8, 8), (None, None)}
    for field in ("param_share", "mac_share", "bop_share"):
        assert sum(getattr(s, field) for s in shares.values()) == pytest.approx(1.0, abs=1e-12)
    fp = shares[(None, None)]
    assert fp.bops == fp.macs * 32 * 32 and shares[(4, 4)].bops == shares[(4, 4)].macs * 16
    params = sum(m.weight.numel() for m in unet.modules() if type(m) in (nn.Conv2d, nn.Linear))
    params += sum(m.bias.numel() for m in unet.modules()
                  if type(m) in (nn.Conv2d, nn.Linear) and m.bias is not None)
    assert sum(s.params for s in shares.values()) == params


def test_the_printed_report_states_the_coverage_and_the_bops(counted):
    unet, counts = counted
    _, report = quantize_model(unet, "w4a4")
    text = str(report.with_macs(counts))
    assert "W4A4: " in text and "% of conv/linear MACs" in text
    assert "BOPs per sample:" in text and "attention score/value matmuls (not in the BOPs)" in text


def test_a_report_without_mac_counts_refuses_to_state_bops(tiny_unet):
    _, report = quantize_model(tiny_unet, "w4a4")
    with pytest.raises(ValueError, match=r"no MAC counts: call report.with_macs"):
        report.precision_shares()
    assert "BOPs" not in str(report)


def test_counts_of_another_unet_are_refused_naming_a_layer(counted, tiny_cond_unet):
    _, counts = counted
    _, report = quantize_model(tiny_cond_unet, "w4a4")
    with pytest.raises(ValueError, match=r"no MAC count for \d+ layer\(s\) of the report, e\.g\. '"):
        report.with_macs(counts)


def test_ldm4_w4a4_covers_96_percent_at_4_bit_with_18_6x_fewer_bops():
    """The LDM-4 ImageNet UNet (400M parameters) built and counted on the meta device: shapes only.
    The paper's FP BOPs 102.20 T are its conv+linear MACs x 32 x 32; with the lineage's FP
    shortcut/downsample convs, W4A4 is 5.50 T (18.6x), not the paper's 2.19 T."""
    from saq_lightning.models import build_model
    from saq_lightning.models.specs import load_model_spec

    spec = load_model_spec(Path(__file__).resolve().parents[1] / "configs/models/ldm4_imagenet.yaml")
    with torch.device("meta"):
        model = build_model(spec, load_weights=False)
        x, t = torch.zeros(1, 3, 64, 64), torch.zeros(1)
        counts = count_macs(model.unet, lambda: model.conditional_eps(x, t, model.null_cond(1)))
        _, report = quantize_model(model.unet, "w4a4")
    report = report.with_macs(counts)
    assert report.fp_bops / 1e12 == pytest.approx(102.16, abs=0.005)
    assert report.bops / 1e12 == pytest.approx(5.50, abs=0.005)
    assert report.fp_bops / report.bops == pytest.approx(18.6, abs=0.05)
    four = next(s for s in report.precision_shares() if (s.weight_bits, s.act_bits) == (4, 4))
    assert four.param_share == pytest.approx(0.963, abs=0.0005)
    assert four.mac_share == pytest.approx(0.961, abs=0.0005)
