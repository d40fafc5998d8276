"""A small CNN classifier of 8x8 digits whose penultimate features define the digits FD.

Inception features mean nothing on 8x8 single-channel digits; a classifier trained on the same
data gives a feature space in which Frechet distance tracks sample quality (as in the FD/"FID on
MNIST" practice of small-scale diffusion papers).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

FEATURE_DIM = 64


class DigitsClassifier(nn.Module):
    """conv-conv-pool-conv-pool -> 64-d features -> 10 logits, on ``[B,1,8,8]`` in ``[-1, 1]``."""

    def __init__(self, width: int = 32, feature_dim: int = FEATURE_DIM, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.GroupNorm(8, 2 * width), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(2 * width, feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)
        self.config = {"width": width, "feature_dim": feature_dim, "num_classes": num_classes}

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class DigitsFeatureExtractor(nn.Module):
    """The classifier's penultimate features, in the shape torchmetrics' FID expects."""

    def __init__(self, classifier: DigitsClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.config["feature_dim"]

    def forward(self, x: Tensor) -> Tensor:
        # torchmetrics' set_dtype(float64) converts this module too: follow its dtype.
        return self.classifier.features(x.to(self.classifier.head.weight.dtype))


def default_classifier_path() -> Path:
    return Path(str(resources.files("saq_lightning") / "weights" / "digits_classifier.safetensors"))


def load_digits_classifier(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Load the classifier (frozen, eval mode) and its sidecar metadata."""
    path = Path(path) if path is not None else default_classifier_path()
    side = path.with_suffix(".json")
    if not path.is_file() or not side.is_file():
        raise FileNotFoundError(
            f"digits classifier weights {path} (and its sidecar {side.name}) not found; the package "
            "ships them, or reproduce them with "
            "`python -m saq_lightning fit --config configs/digits_classifier.yaml`"
        )
    meta = json.loads(side.read_text())
    model = DigitsClassifier(**meta.get("classifier_config", {}))
    model.load_state_dict(load_file(str(path), device=str(device)))
    return model.to(device).eval().requires_grad_(False), meta
