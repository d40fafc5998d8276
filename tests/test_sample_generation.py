"""Building blocks of sampling for evaluation: setting, per-sample noise, class balance."""

from __future__ import annotations

import pytest
import torch

from saq_lightning.metrics.digits_eval import sample_class_balanced
from saq_lightning.metrics.sample_generation import (
    SamplerSetting,
    condition_classes,
    generate_images,
)
from saq_lightning.models import (
    ClassEmbedder,
    ClassLabelConditioner,
    DiffusionModel,
    ModelSpec,
    build_model,
)
from saq_lightning.seeding import evaluation_labels, evaluation_noise

SCHEDULE = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000}


def test_noise_of_a_sample_depends_only_on_the_seed_and_its_index():
    both = evaluation_noise(5, [0, 1, 2, 3], (1, 4, 4))
    torch.testing.assert_close(evaluation_noise(5, [2, 3], (1, 4, 4)), both[2:], rtol=0, atol=0)
    assert not torch.equal(evaluation_noise(6, [0], (1, 4, 4))[0], both[0])


def test_imagenet_like_labels_cycle_through_the_1000_real_classes():
    model = DiffusionModel(torch.nn.Identity(), SCHEDULE, (3, 8, 8), conditioner=ClassEmbedder(1001, 4))
    classes = condition_classes(model)
    assert classes == list(range(1000))  # the null class 1000 is never sampled
    counts = torch.bincount(evaluation_labels(range(50_000), classes), minlength=1000)
    assert counts.min() == counts.max() == 50


def test_digits_classes_exclude_the_null_class():
    model = DiffusionModel(torch.nn.Identity(), SCHEDULE, (1, 8, 8), conditioner=ClassLabelConditioner(11, 10))
    assert condition_classes(model) == list(range(10))


def test_eta_is_a_ddim_option_only():
    assert SamplerSetting("ddim", eta=0.5).solver_options() == {"eta": 0.5}
    with pytest.raises(ValueError, match="eta is a DDIM option; solver 'dpm2' is deterministic"):
        SamplerSetting("dpm2", eta=0.5).solver_options()


def test_label_names_every_non_default_choice():
    assert SamplerSetting("dpm3", 10, "logSNR", 1.5, order=1).label() == "dpm3@10 (logSNR, cfg 1.5, order 1)"


def test_sample_class_balanced_keeps_its_one_generator_noise():
    model = build_model(ModelSpec(kind="digits"))
    setting = SamplerSetting("ddim", steps=2)
    samples, labels = sample_class_balanced(model, 12, setting, seed=4, batch_size=5)
    x_T = torch.randn((12, 1, 8, 8), generator=torch.Generator().manual_seed(4))
    assert labels.tolist() == [i % 10 for i in range(12)]
    # batches of 5 vs one of 12: float32 reductions differ in the last bits
    torch.testing.assert_close(samples, generate_images(model, x_T, labels, setting), rtol=0, atol=1e-4)
