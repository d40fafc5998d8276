"""The author's recipe as options: per-term loss reductions, scale-aware LoRA rates, phase batches
proportional to step counts."""

from __future__ import annotations

import pytest
import torch
from quant_helpers import calibrated_class_student

from saq_lightning.alignment.mota import mota_terms, reduce_mota
from saq_lightning.data.mixstep import MixStepPhase, MixStepSchedule
from saq_lightning.quant import param_groups


def test_sum_reductions_are_the_authors_mse_sum_plus_100_sum_of_one_minus_cos():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    terms = mota_terms(pred, target, 1.0, 100.0)
    loss, per_sample = reduce_mota(terms, 48, 1.0, 100.0, "sum", "sum")
    cos = torch.nn.functional.cosine_similarity(pred.flatten(1), target.flatten(1), dim=1)
    expected = torch.nn.functional.mse_loss(pred, target, reduction="sum") + 100 * (1 - cos).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(per_sample.sum(), expected, rtol=1e-6, atol=0)


def test_mean_reductions_are_the_default_loss():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    terms = mota_terms(pred, target, 1.0, 1.0)
    loss, _ = reduce_mota(terms, 8, 1.0, 1.0)
    torch.testing.assert_close(loss, terms.loss.mean(), rtol=1e-7, atol=0)
    mixed, _ = reduce_mota(terms, 8, 1.0, 1.0, "mean", "sum")
    torch.testing.assert_close(mixed, terms.mse.mean() + (1 - terms.cos).sum(), rtol=1e-7, atol=0)
    with pytest.raises(ValueError, match="loss.mse_reduction must be one of"):
        reduce_mota(terms, 8, 1.0, 1.0, "median")


def test_scale_aware_lora_rates_are_the_mean_weight_step_over_2500():
    _, student = calibrated_class_student()
    groups = {g["name"]: g for g in param_groups(student, lr=123.0, lora_lr_mode="scale_aware")}
    checked = 0
    for name, layer in student.quant_layers():
        if layer.lora is not None:
            step = float(layer.w_quant.effective()[0].mean())
            assert groups[f"lora/unet.{name}"]["lr"] == pytest.approx(step / 2500, rel=1e-9)
            checked += 1
    assert checked > 3


@pytest.mark.parametrize("mode", ["cycle", "progressive"])
def test_phase_batches_proportional_to_steps(mode):
    schedule = MixStepSchedule(tuple(MixStepPhase(n) for n in (100, 50, 20, 10)), mode=mode,
                               batches_per_phase=1, phase_batches="steps")
    seq = [schedule.phase_at(i) for i in range(20)]
    assert seq[:18] == [0] * 10 + [1] * 5 + [2] * 2 + [3]
    assert seq[18:] == ([0, 0] if mode == "cycle" else [3, 3])
    assert MixStepSchedule.from_dict(schedule.to_dict()) == schedule
    assert "phase_batches" not in MixStepSchedule(schedule.phases).to_dict()  # old checkpoints resume


@pytest.mark.parametrize("name", ["digits_w4a4_author.yaml", "ldm4_w4a4_author.yaml"])
def test_the_author_recipe_decays_lora_and_activation_steps_at_adamws_default(name):
    """The author's code trains LoRA and activation steps with AdamW's default weight decay 0.01
    (weight-quantizer steps never decay)."""
    from config_helpers import parse

    from saq_lightning.alignment.optim import build_optimizer
    from saq_lightning.alignment.settings import OptimizerSettings

    settings = OptimizerSettings(**parse(name).model.init_args.as_dict()["optimizer"])
    assert (settings.weight_decay, settings.act_weight_decay) == (0.01, 0.01)
    _, student = calibrated_class_student()
    optimizer, _ = build_optimizer(student, settings, 100)
    decay = {g["name"].split("/")[0]: g["weight_decay"] for g in optimizer.param_groups}
    assert decay == {"lora": 0.01, "weight_steps": 0.0, "act_tables": 0.01}
