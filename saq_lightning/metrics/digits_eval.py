"""Sampling a class-conditional model class-balanced and scoring it on the digits metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saq_lightning.data.digits import digits_split
from saq_lightning.metrics.digits_classifier import DigitsClassifier
from saq_lightning.metrics.digits_quality import DigitsQuality, digits_quality
from saq_lightning.models.diffusion_model import DiffusionModel
from saq_lightning.sampling import make_solver, sample, time_grid


@dataclass(frozen=True)
class SamplerSetting:
    """How a model is sampled: solver name (``sampling.make_solver``), steps, grid spacing, CFG."""

    solver: str = "ddim"
    steps: int = 50
    spacing: str = "time_uniform"
    guidance_scale: float = 2.0

    def label(self) -> str:
        return f"{self.solver}@{self.steps} ({self.spacing}, cfg {self.guidance_scale:g})"


def balanced_labels(n: int, num_classes: int = 10) -> Tensor:
    return torch.arange(n) % num_classes


@torch.no_grad()
def sample_class_balanced(
    model: DiffusionModel,
    n: int,
    setting: SamplerSetting,
    seed: int = 0,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
) -> tuple[Tensor, Tensor]:
    """``n`` samples (labels ``i % 10``) from the same seeded ``x_T`` for every model and setting."""
    schedule = model.noise_schedule()
    predictor = model.noise_predictor(setting.guidance_scale, schedule)
    solver = make_solver(setting.solver, schedule)
    grid = time_grid(schedule, setting.steps, setting.spacing)
    labels = balanced_labels(n)
    x_T = torch.randn((n, *model.sample_shape), generator=torch.Generator().manual_seed(seed))
    out = [
        sample(predictor, xb.to(device), grid, solver, cond=yb.to(device)).float().cpu()
        for xb, yb in zip(x_T.split(batch_size), labels.split(batch_size))
    ]
    return torch.cat(out).clamp(-1.0, 1.0), labels


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
