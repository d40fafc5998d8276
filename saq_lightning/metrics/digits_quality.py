"""Quality figures of the embedded default: FD in the digits classifier's feature space and the
classifier's accuracy on class-conditional samples, plus the same figures in pixel space and k-NN
precision/recall in both spaces (:mod:`.digits_spaces`)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from saq_lightning.metrics.digits_classifier import DigitsClassifier, DigitsFeatureExtractor


def digits_fd(
    classifier: DigitsClassifier, samples: Tensor, reference: Tensor, batch_size: int = 512
) -> float:
    """Frechet distance between two sets of ``[N,1,8,8]`` images in ``[-1,1]`` (float64 statistics).

    torchmetrics' FID with the classifier's penultimate layer as the feature extractor.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    for name, images in (("samples", samples), ("reference", reference)):
        if images.ndim != 4 or images.shape[1:] != (1, 8, 8):
            raise ValueError(f"{name} must have shape [N, 1, 8, 8], got {tuple(images.shape)}")
        if images.shape[0] < 2:
            raise ValueError(f"{name}: FD needs at least 2 images, got {images.shape[0]}")
    device = next(classifier.parameters()).device
    metric = FrechetInceptionDistance(
        # set_dtype(float64) converts the feature extractor in place: give it a private copy.
        feature=DigitsFeatureExtractor(copy.deepcopy(classifier)), normalize=True, input_img_size=(1, 8, 8),
        # the FD of the images given here, never a gather across ranks: under DDP only rank 0 calls
        # this (the DigitsFDCallback), and a sync would wait for ranks that never come
        sync_on_compute=False,
    ).to(device)
    metric.set_dtype(torch.float64)
    for images, real in ((reference, True), (samples, False)):
        for chunk in images.split(batch_size):
            metric.update(chunk.to(device, torch.float32), real=real)
    return float(metric.compute())


@torch.no_grad()
def class_accuracy(classifier: DigitsClassifier, samples: Tensor, labels: Tensor) -> float:
    """Fraction of samples of class c that the classifier labels c."""
    device = next(classifier.parameters()).device
    pred = classifier(samples.to(device, torch.float32)).argmax(1).cpu()
    return float((pred == labels.cpu()).float().mean())


@dataclass
class DigitsQuality:
    """``fd``/``precision``/``recall``: the classifier's feature space; ``pixel_*``: pixel space
    (no learned features). Precision/recall: k-NN manifolds, k = 3."""

    fd: float
    class_accuracy: float
    precision: float = float("nan")
    recall: float = float("nan")
    pixel_fd: float = float("nan")
    pixel_precision: float = float("nan")
    pixel_recall: float = float("nan")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def digits_quality(
    classifier: DigitsClassifier, samples: Tensor, labels: Tensor, reference: Tensor
) -> DigitsQuality:
    return quality_in_spaces(classifier, samples, labels, reference, samples, reference)


def quality_in_spaces(
    classifier: DigitsClassifier, samples: Tensor, labels: Tensor, reference: Tensor,
    pixel_samples: Tensor, pixel_reference: Tensor,
) -> DigitsQuality:
    """The classifier-space figures of ``samples`` (8x8) against ``reference`` and the pixel-space
    figures of ``pixel_samples`` against ``pixel_reference`` (the same images, or the same images at
    another size)."""
    from .digits_spaces import classifier_features, pixel_features, space_scores

    feat = space_scores(classifier_features(classifier, samples), classifier_features(classifier, reference))
    pix = space_scores(pixel_features(pixel_samples), pixel_features(pixel_reference))
    return DigitsQuality(
        fd=digits_fd(classifier, samples, reference),
        class_accuracy=class_accuracy(classifier, samples, labels),
        precision=feat["precision"], recall=feat["recall"],
        pixel_fd=pix["fd"], pixel_precision=pix["precision"], pixel_recall=pix["recall"],
    )
