"""Digits quality at 16x16: samples pooled to 8x8 for the classifier FD, pixel FD at full size."""

from __future__ import annotations

import pytest
import torch

from saq_lightning.data.digits import load_digits_tensors
from saq_lightning.metrics.digits_classifier import load_digits_classifier
from saq_lightning.metrics.digits_quality import digits_quality
from saq_lightning.metrics.digits_resized import (
    pool_to_native,
    resized_digits_quality,
    resized_references,
)


@pytest.fixture(scope="module")
def data16():
    classifier, _ = load_digits_classifier()
    upsampled, pooled = resized_references(16)
    _, labels = load_digits_tensors(8)
    return classifier, upsampled, pooled, labels


def test_pooling_averages_each_2x2_block_to_one_pixel():
    images = torch.arange(256, dtype=torch.float32).reshape(1, 1, 16, 16)
    pooled = pool_to_native(images)
    assert pooled.shape == (1, 1, 8, 8)
    assert pooled[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 16 + 17) / 4, abs=1e-6)
    assert pooled[0, 0, 7, 7].item() == pytest.approx((238 + 239 + 254 + 255) / 4, abs=1e-6)


def test_native_size_is_left_unchanged_and_other_sizes_are_refused():
    images = torch.randn(3, 1, 8, 8)
    assert pool_to_native(images) is images
    with pytest.raises(ValueError, match=r"\[N, 1, 8k, 8k\]"):
        pool_to_native(torch.randn(3, 1, 12, 12))


def test_the_round_trip_reference_keeps_the_digits_recognisable(data16):
    classifier, _, pooled, labels = data16
    pred = classifier(pooled).argmax(1)
    assert float((pred == labels).float().mean()) > 0.95  # the 8x8 classifier's own accuracy is ~0.99


def test_real_digits_through_the_round_trip_score_zero_fd_in_both_spaces(data16):
    classifier, upsampled, _, labels = data16
    q = resized_digits_quality(classifier, upsampled, labels, upsampled)
    # the same set on both sides; 1e-4: float64 rounding of the eigenvalues (the upsampled pixels'
    # covariance is rank 64 of 256, its null space rounds to +-1e-6)
    assert abs(q.fd) < 1e-4 and abs(q.pixel_fd) < 1e-4
    assert q.precision == 1.0 and q.pixel_precision == 1.0


def test_a_subset_scores_like_the_8x8_subset_and_a_shifted_set_scores_far_worse(data16):
    classifier, upsampled, _, labels = data16
    half = resized_digits_quality(classifier, upsampled[:600], labels[:600], upsampled)
    shifted = torch.roll(upsampled[:600], shifts=4, dims=-1)  # two native pixels to the right
    moved = resized_digits_quality(classifier, shifted, labels[:600], upsampled)
    real8, _ = load_digits_tensors(8)
    native = digits_quality(classifier, real8[:600], labels[:600], real8)
    # a real subset is near the set it comes from at either size (sampling noise of 600 of 1797)
    assert half.fd < 1.0 and native.fd < 1.0
    assert half.pixel_fd < 2.0
    # shifting by two native pixels moves both FDs by an order of magnitude or more
    assert moved.fd > 10 * half.fd and moved.pixel_fd > 10 * half.pixel_fd
    assert moved.class_accuracy < half.class_accuracy


def test_samples_at_another_size_than_the_reference_are_refused(data16):
    classifier, upsampled, _, labels = data16
    with pytest.raises(ValueError, match="same image shape"):
        resized_digits_quality(classifier, torch.zeros(10, 1, 8, 8), labels[:10], upsampled)
