"""Digits quality in feature spaces that are not a classifier trained for accuracy.

The digits FD's feature space is the penultimate layer of a classifier trained to tell digits
apart; it can miss damage that does not move a digit across a class boundary (an independent
re-scoring found naive-quantization damage in pixel space that the classifier features miss, and
the opposite CFG preference). So every digits figure is also reported in **pixel space** (the 64
pixel values in ``[-1, 1]``; no learned weights at all): Frechet distance there, and the k-NN
precision/recall (Kynkaanniemi et al. 2019, ``k = 3``) in both spaces.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .digits_classifier import DigitsClassifier
from .feature_stats import feature_stats, frechet_distance
from .precision_recall import precision_recall


def pixel_features(images: Tensor) -> Tensor:
    """``[N, C*H*W]`` float64 pixel vectors of ``[N, C, H, W]`` images in ``[-1, 1]`` (any size)."""
    return images.detach().reshape(images.shape[0], -1).to("cpu", torch.float64)


@torch.no_grad()
def classifier_features(classifier: DigitsClassifier, images: Tensor, batch_size: int = 512) -> Tensor:
    """The digits classifier's penultimate features (the digits FD's space), float64 on the CPU."""
    device = next(classifier.parameters()).device
    out = [classifier.features(chunk.to(device, torch.float32)).to("cpu", torch.float64)
           for chunk in images.split(batch_size)]
    return torch.cat(out)


def fd_of(samples: Tensor, reference: Tensor) -> float:
    """Frechet distance between two ``[N, D]`` feature sets (float64 statistics)."""
    return frechet_distance(feature_stats(samples.numpy(), "samples"),
                            feature_stats(reference.numpy(), "reference"))


def space_scores(samples: Tensor, reference: Tensor, k: int = 3) -> dict[str, float]:
    """``fd``, ``precision``, ``recall`` of ``[N, D]`` sample features against reference ones."""
    precision, recall = precision_recall(reference, samples, k=k)
    return {"fd": fd_of(samples, reference), "precision": precision, "recall": recall}
