"""Digits figures in a second feature space (pixels) and k-NN precision/recall in both."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saq_lightning.data.digits import digits_split
from saq_lightning.metrics.digits_classifier import load_digits_classifier
from saq_lightning.metrics.digits_quality import digits_quality
from saq_lightning.metrics.digits_spaces import fd_of, pixel_features, space_scores


@pytest.fixture(scope="module")
def data():
    classifier, _ = load_digits_classifier()
    real, labels = digits_split("all")
    return classifier, real, labels


def test_pixel_fd_is_the_frechet_distance_of_the_raw_pixels():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 1, 8, 8, generator=g, dtype=torch.float64)
    b = torch.randn(400, 1, 8, 8, generator=g, dtype=torch.float64) * 1.5 + 0.2
    fa, fb = pixel_features(a).numpy(), pixel_features(b).numpy()
    mu = fa.mean(0) - fb.mean(0)
    ca, cb = np.cov(fa, rowvar=False), np.cov(fb, rowvar=False)
    w, v = np.linalg.eigh(ca)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    expected = mu @ mu + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(np.clip(np.linalg.eigvalsh(root @ cb @ root), 0, None)).sum()
    assert fd_of(pixel_features(a), pixel_features(b)) == pytest.approx(expected, rel=1e-8)


def test_real_digits_score_well_and_noise_badly_in_both_spaces(data):
    classifier, real, labels = data
    good = digits_quality(classifier, real[:600], labels[:600], real)
    noise = torch.rand(600, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    bad = digits_quality(classifier, noise, labels[:600], real)
    assert good.precision == 1.0 and good.pixel_precision == 1.0  # every real digit is inside
    assert good.pixel_fd < 1.0 and bad.pixel_fd > 10.0
    assert bad.pixel_precision < 0.05 and bad.pixel_recall < good.pixel_recall


def test_space_scores_of_a_set_against_itself():
    feats = pixel_features(torch.randn(300, 1, 8, 8, generator=torch.Generator().manual_seed(2)))
    s = space_scores(feats, feats)
    assert s["precision"] == 1.0 and s["recall"] == 1.0 and abs(s["fd"]) < 1e-8
