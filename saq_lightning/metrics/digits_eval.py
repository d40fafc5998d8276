"""Sampling a class-conditional model class-balanced and scoring it on the digits metrics."""

from __future__ import annotations

import torch
from torch import Tensor

from saq_lightning.data.digits import digits_split
from saq_lightning.metrics.digits_classifier import DigitsClassifier
from saq_lightning.metrics.digits_quality import DigitsQuality, digits_quality
from saq_lightning.metrics.sample_generation import SamplerSetting, generate_images
from saq_lightning.models.diffusion_model import DiffusionModel
from saq_lightning.seeding import evaluation_labels

__all__ = ["SamplerSetting", "class_balanced_inputs", "evaluate_digits_model", "sample_class_balanced"]


def class_balanced_inputs(model: DiffusionModel, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``x_T`` of ``n`` samples from one seeded generator, and labels ``i % 10``."""
    x_T = torch.randn((n, *model.sample_shape), generator=torch.Generator().manual_seed(seed))
    return x_T, evaluation_labels(range(n), range(10))


@torch.no_grad()
def sample_class_balanced(
    model: DiffusionModel,
    n: int,
    setting: SamplerSetting,
    seed: int = 0,
    batch_size: int = 500,
) -> tuple[Tensor, Tensor]:
    """``n`` samples (labels ``i % 10``) from the same seeded ``x_T`` for every model and setting,
    on the model's device.

    (One generator for all ``n``; the ``sample`` command seeds every sample on its own instead, so
    that its samples do not depend on how they are split over batches and ranks.)
    """
    x_T, labels = class_balanced_inputs(model, n, seed)
    out = [generate_images(model, xb, yb, setting) for xb, yb in zip(x_T.split(batch_size), labels.split(batch_size))]
    return torch.cat(out), labels


def evaluate_digits_model(
    model: DiffusionModel,
    classifier: DigitsClassifier,
    setting: SamplerSetting,
    n: int = 1000,
    seed: int = 0,
    reference: Tensor | None = None,
) -> DigitsQuality:
    """FD against all 1,797 real digits (or ``reference``) and class accuracy of ``n`` samples."""
    samples, labels = sample_class_balanced(model, n, setting, seed)
    if reference is None:
        reference, _ = digits_split("all")
    return digits_quality(classifier, samples, labels, reference)
