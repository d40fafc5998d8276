"""Digits quality of samples from a model trained on the digits upsampled to ``size x size``.

The digits classifier (and so the digits FD and accuracy) reads ``[N, 1, 8, 8]`` only. Samples at
``size = 8k`` are average-pooled ``k x k`` back to 8x8 and scored against the real digits put
through the *same* round trip (bilinear upsample to ``size``, then the same pooling), so that the
lossy round trip itself costs nothing: identical images score FD 0 whatever the size. Pixel-space
FD and k-NN precision/recall are taken at the full ``size x size`` against the upsampled real
digits (no learned features, no pooling).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from saq_lightning.data.digits import DIGITS_SHAPE, load_digits_tensors
from saq_lightning.metrics.digits_classifier import DigitsClassifier
from saq_lightning.metrics.digits_quality import DigitsQuality, quality_in_spaces

NATIVE = DIGITS_SHAPE[-1]


def pool_to_native(images: Tensor) -> Tensor:
    """``[N, 1, 8k, 8k]`` images average-pooled ``k x k`` to ``[N, 1, 8, 8]`` (``k = 1``: unchanged)."""
    size = images.shape[-1]
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[-2] != size or size % NATIVE:
        raise ValueError(f"images must have shape [N, 1, 8k, 8k], got {tuple(images.shape)}")
    k = size // NATIVE
    return images if k == 1 else F.avg_pool2d(images, kernel_size=k)


def resized_references(size: int) -> tuple[Tensor, Tensor]:
    """The real digits at ``size`` (what the model was trained on) and their pooled round trip."""
    upsampled, _ = load_digits_tensors(size)
    return upsampled, pool_to_native(upsampled)


def resized_digits_quality(
    classifier: DigitsClassifier, samples: Tensor, labels: Tensor, reference: Tensor
) -> DigitsQuality:
    """``fd``/``class_accuracy``/``precision``/``recall`` of the pooled samples against the pooled
    ``reference`` (classifier features, 8x8); ``pixel_*`` at full size against ``reference``.

    ``reference``: real images at the samples' size (``resized_references(size)[0]``).
    """
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape[1:])} and reference {tuple(reference.shape[1:])} "
                         "must have the same image shape")
    pooled, pooled_ref = pool_to_native(samples.float().cpu()), pool_to_native(reference.float().cpu())
    return quality_in_spaces(classifier, pooled, labels, pooled_ref, samples, reference)


__all__ = ["pool_to_native", "resized_digits_quality", "resized_references"]
