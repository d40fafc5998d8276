"""AdaRound on single layers: it beats nearest rounding, ends hard, and exports bit for bit.

One Conv2d and one Linear with random weights and inputs, W3 (few levels, so rounding matters),
activations FP during the weight phase as in BRECQ; block = the single layer.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from saq_lightning.quant import (
    QuantPolicy,
    calibrate,
    export_student,
    load_exported,
    quantize_model,
)
from saq_lightning.quant.reconstruction import Block, ReconstructionSettings, reconstruct_block
from saq_lightning.quant.reconstruction.pipeline import record_block
from saq_lightning.quant.state import set_quant_state

POLICY = QuantPolicy(name="w3a8", weight_bits=3, act_bits=8, lora_rank=0, rules=[], fp_patterns=[],
                     n_buckets=1)
SETTINGS = ReconstructionSettings(iters=1500, batch_size=64, lr=1e-2, learn_act_steps=False,
                                  record_batch_size=128, log_every=100)


class Net(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, sample, timestep):
        return self.layer(sample)


def _inputs(kind: str, n: int = 256) -> torch.Tensor:
    """Correlated inputs (a few latent factors mixed into every feature, plus a little noise).

    With isotropic inputs nearest rounding is already optimal (the output error is then just
    ``||W - W_q||^2``); real activations are correlated, which is what AdaRound exploits.
    """
    g = torch.Generator().manual_seed(3)
    if kind == "conv":
        z = torch.randn(n, 3, 3, 3, generator=g)
        z = torch.nn.functional.interpolate(z, size=(6, 6), mode="bilinear", align_corners=False)
        mix = torch.randn(8, 3, generator=g)
        return torch.einsum("ck,nkhw->nchw", mix, z) + 0.05 * torch.randn(n, 8, 6, 6, generator=g)
    return torch.randn(n, 6, generator=g) @ torch.randn(6, 64, generator=g) + 0.05 * torch.randn(n, 64, generator=g)


def _student(kind: str):
    torch.manual_seed(1)
    layer = nn.Conv2d(8, 16, 3, padding=1) if kind == "conv" else nn.Linear(64, 32)
    teacher = Net(layer).eval()
    student, _ = quantize_model(teacher, POLICY, warn=False)
    x = _inputs(kind)
    calibrate(student, [{"sample": x, "timestep": torch.zeros(x.shape[0])}])
    return teacher, student, x


def _batches(teacher, student, x, size=128):
    out = []
    for chunk in x.split(size):
        t = torch.zeros(chunk.shape[0])
        out.append((lambda c=chunk, t=t: teacher(c, t), lambda c=chunk, t=t: student(c, t), chunk.shape[0]))
    return out


def _weight_mse(teacher, student, x) -> float:
    with torch.no_grad(), set_quant_state(student, weight=True, act=False):
        return float((student(x, torch.zeros(len(x))) - teacher(x, torch.zeros(len(x)))).pow(2).mean())


@pytest.fixture(scope="module", params=["conv", "linear"])
def reconstructed(request, tmp_path_factory):
    teacher, student, x = _student(request.param)
    nearest = _weight_mse(teacher, student, x)
    block = Block("layer", student.unet.layer, [("layer", student.unet.layer)])
    cache = record_block(block, teacher, student, _batches(teacher, student, x), SETTINGS,
                         tmp_path_factory.mktemp("spill") / "c.pt")
    result = reconstruct_block(block, cache, x.shape[0], student.context, SETTINGS)
    return request.param, teacher, student, x, nearest, result


def test_adaround_lowers_output_mse_against_nearest_rounding_by_at_least_2x(reconstructed):
    kind, teacher, student, x, nearest, _ = reconstructed
    ada = _weight_mse(teacher, student, x)
    # measured: conv 7.0x, linear 9.0x lower (W3, 1500 iterations at lr 1e-2); required: 2x
    assert ada < nearest / 2, (kind, nearest, ada)


def test_after_training_99_percent_of_h_are_within_1e3_of_0_or_1(reconstructed):
    *_, result = reconstructed
    assert result.hard_fraction >= 0.99


def test_hard_rounding_changes_some_decisions_from_nearest(reconstructed):
    _, _, student, *_ = reconstructed
    layer = student.unet.layer
    nearest = layer.w_quant.codes(layer.merged_weight())
    ada = layer.weight_codes()
    assert layer.rounding.is_hard
    changed = (nearest != ada).float().mean()
    assert 0.01 < changed < 0.5 and int((nearest - ada).abs().max()) == 1


def test_exported_integer_weights_equal_the_hard_rounded_ones_bit_for_bit(reconstructed, tmp_path):
    _, teacher, student, x, *_ = reconstructed
    layer = student.unet.layer
    w = layer.merged_weight().float()
    s, z = layer.w_quant.effective()
    hard = torch.clamp(torch.floor(w / s) + layer.rounding.up.float() + z, layer.w_quant.qmin, layer.w_quant.qmax)
    export_student(student, tmp_path / "export")
    loaded = load_exported(tmp_path / "export", model=Net(type(teacher.layer)(*_shape_args(teacher.layer))))
    codes = loaded.unet.layer.weight_codes()
    assert torch.equal(codes, hard.to(torch.int16))
    with torch.no_grad():
        t = torch.zeros(len(x))
        assert torch.equal(loaded(x, t), student(x, t))  # dequantized = fake-quantized, exactly


def _shape_args(layer: nn.Module):
    if isinstance(layer, nn.Conv2d):
        return layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding
    return layer.in_features, layer.out_features


def test_lora_trains_through_hard_rounding_on_the_merged_weight():
    """SA-QLoRA from an SA-PTQ student: the rounding decisions stay, LoRA gets gradients (STE floor)."""
    from saq_lightning.quant.rounding import AdaRound

    torch.manual_seed(2)
    teacher = Net(nn.Linear(24, 16)).eval()
    policy = QuantPolicy(name="w4a8", weight_bits=4, act_bits=8, lora_rank=2, rules=[], fp_patterns=[], n_buckets=1)
    student, _ = quantize_model(teacher, policy, warn=False)
    x = torch.randn(32, 24)
    calibrate(student, [{"sample": x, "timestep": torch.zeros(32)}])
    layer = student.unet.layer
    layer.rounding = AdaRound.from_weight(layer.merged_weight(), layer.w_quant)
    layer.rounding.harden()
    codes = layer.weight_codes()
    with torch.no_grad():
        layer.lora.B.normal_(0, 1e-3)  # a small delta: most codes keep their decision
    out = student(x, torch.zeros(32))
    out.pow(2).mean().backward()
    assert layer.lora.B.grad is not None and float(layer.lora.B.grad.abs().sum()) > 0
    assert layer.rounding.V is None  # the decisions are fixed, not trained
    assert float((layer.weight_codes() == codes).float().mean()) > 0.9
