"""Feature-space metrics on toy cases with known answers: Frechet distance, KID, Inception Score,
k-NN precision/recall (no network involved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from saq_lightning.metrics.feature_stats import (
    FeatureStats,
    StatsAccumulator,
    feature_stats,
    frechet_distance,
)
from saq_lightning.metrics.inception_score import inception_score
from saq_lightning.metrics.kid import kernel_inception_distance
from saq_lightning.metrics.precision_recall import precision_recall


def gaussian(n: int, d: int, mean: float = 0.0, std: float = 1.0, seed: int = 0) -> torch.Tensor:
    return mean + std * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- Frechet distance ---------------------------------------------------------------------------


def test_frechet_distance_of_identical_statistics_is_zero():
    s = feature_stats(gaussian(200, 16))
    assert abs(frechet_distance(s, s)) < 1e-9


def test_frechet_distance_of_isotropic_gaussians_matches_closed_form():
    # N(m, a^2 I) vs N(0, b^2 I) in d dims: |m|^2 + d (a - b)^2
    d, m, a, b = 8, np.full(8, 0.5), 2.0, 0.5
    one = FeatureStats(m, a**2 * np.eye(d), 10)
    two = FeatureStats(np.zeros(d), b**2 * np.eye(d), 10)
    assert frechet_distance(one, two) == pytest.approx(d * 0.25 + d * (a - b) ** 2, rel=1e-12)


def test_frechet_distance_agrees_with_scipy_sqrtm_formula_on_random_covariances():
    from scipy import linalg

    x, y = gaussian(300, 12, seed=1), gaussian(300, 12, 0.3, 1.5, seed=2) @ torch.randn(
        12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    a, b = feature_stats(x), feature_stats(y)
    covmean = linalg.sqrtm(a.sigma @ b.sigma).real
    expected = ((a.mu - b.mu) ** 2).sum() + np.trace(a.sigma + b.sigma - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("kept", [(True, True), (True, False), (False, True)], ids=["both", "first", "second"])
def test_low_rank_frechet_distance_equals_the_full_covariance_route(kept):
    # fewer samples than dimensions: the statistics keep a basis and the n x n route is exact
    x, y = feature_stats(gaussian(20, 64, seed=17)), feature_stats(gaussian(30, 64, 0.2, 1.3, seed=18))
    assert x.basis is not None and y.basis is not None
    full = frechet_distance(FeatureStats(x.mu, x.sigma, x.n), FeatureStats(y.mu, y.sigma, y.n))
    low = frechet_distance(x if kept[0] else FeatureStats(x.mu, x.sigma, x.n),
                           y if kept[1] else FeatureStats(y.mu, y.sigma, y.n))
    # the full route takes square roots of ~1e-15 rounding eigenvalues of singular matrices: 1e-8 relative
    assert low == pytest.approx(full, rel=1e-7)


def test_running_statistics_over_batches_equal_numpy_mean_and_unbiased_covariance():
    x = gaussian(100, 5, seed=4)
    acc = StatsAccumulator()
    for part in x.split(17):
        acc.update(part)
    s = acc.stats()
    np.testing.assert_allclose(s.mu, x.mean(0).numpy(), atol=1e-12)
    np.testing.assert_allclose(s.sigma, np.cov(x.numpy(), rowvar=False), atol=1e-12)
    assert s.basis is None  # more samples than dimensions: no rows kept


def test_statistics_of_a_single_sample_are_refused():
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        feature_stats(gaussian(1, 4), "sample features")


# -- KID ------------------------------------------------------------------------------------------


class _Identity(nn.Module):
    """Lets torchmetrics' KID take features directly (its 'images' are our feature vectors)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_kid_equals_torchmetrics_with_one_subset_of_everything():
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = gaussian(40, 6, seed=5).float(), gaussian(40, 6, 0.4, seed=6).float()
    ours, _ = kernel_inception_distance(real, fake, subsets=1, subset_size=40)
    metric = KernelInceptionDistance(feature=_Identity(), subsets=1, subset_size=40)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    theirs = float(metric.compute()[0])
    assert ours == pytest.approx(theirs, rel=1e-4)


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shifted_one():
    real = gaussian(400, 8, seed=7)
    same, _ = kernel_inception_distance(real, gaussian(400, 8, seed=8), subsets=20, subset_size=100)
    shifted, _ = kernel_inception_distance(real, gaussian(400, 8, 1.0, seed=9), subsets=20, subset_size=100)
    # unbiased: centred on 0 (spread over subsets ~0.03 here); the shifted pair gives ~8
    assert abs(same) < 0.1
    assert shifted > 5.0


def test_kid_with_fewer_samples_than_the_subset_size_is_an_error():
    with pytest.raises(ValueError, match="KID needs at least subset_size=1000 samples features, got 50"):
        kernel_inception_distance(gaussian(2000, 4), gaussian(50, 4))


# -- Inception Score --------------------------------------------------------------------------------


def test_inception_score_of_identical_predictions_is_one():
    mean, std = inception_score(torch.randn(1, 10).expand(50, 10), splits=5)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_predictions_spread_evenly_over_c_classes_is_c():
    c = 8
    logits = torch.full((8 * c, c), -50.0)
    logits[torch.arange(8 * c), torch.arange(8 * c) % c] = 50.0
    mean, _ = inception_score(logits, splits=8)  # every split holds each class once
    assert mean == pytest.approx(c, rel=1e-6)


def test_inception_score_needs_a_sample_per_split():
    with pytest.raises(ValueError, match="10 splits needs at least 10 samples, got 4"):
        inception_score(torch.randn(4, 10), splits=10)


# -- precision / recall ------------------------------------------------------------------------------


def test_precision_and_recall_of_a_set_against_itself_are_one():
    x = gaussian(100, 4, seed=10)
    assert precision_recall(x, x) == (1.0, 1.0)


def test_precision_and_recall_of_disjoint_distributions_are_zero():
    assert precision_recall(gaussian(200, 4, seed=11), gaussian(200, 4, 50.0, seed=12)) == (0.0, 0.0)


def test_precision_and_recall_of_two_samples_of_one_gaussian_are_high():
    p, r = precision_recall(gaussian(1000, 2, seed=13), gaussian(1000, 2, seed=14))
    assert p > 0.9 and r > 0.9


def test_mode_collapse_keeps_precision_and_loses_recall():
    real = gaussian(1000, 2, seed=15)
    collapsed = gaussian(1000, 2, std=0.05, seed=16)  # all samples in the densest 5% of the data
    p, r = precision_recall(real, collapsed)
    assert p > 0.95
    assert r < 0.1


def test_precision_recall_needs_more_points_than_k():
    with pytest.raises(ValueError, match="k=3 needs more than 3 samples, got 3"):
        precision_recall(gaussian(10, 2), gaussian(3, 2))
