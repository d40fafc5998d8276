"""Gaussian statistics of feature sets and the Frechet distance between them (FID, sFID, FD).

``FD = |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))`` with unbiased covariances (ADM,
torch-fidelity and torchmetrics use ``ddof = 1`` too). The matrix square-root term is computed as
``tr((S_1^(1/2) S_2 S_1^(1/2))^(1/2))`` from symmetric eigendecompositions in float64, which
needs no complex arithmetic and no ``eps`` retry for near-singular covariances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``n`` feature vectors."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int

    def __post_init__(self) -> None:
        d = self.mu.shape
        if self.mu.ndim != 1 or self.sigma.shape != (d[0], d[0]):
            raise ValueError(f"inconsistent statistics: mu {self.mu.shape}, sigma {self.sigma.shape}")


def feature_stats(features: Tensor | np.ndarray, what: str = "features") -> FeatureStats:
    """Statistics of ``[N, D]`` features (needs ``N >= 2``)."""
    acc = StatsAccumulator()
    acc.update(features)
    return acc.stats(what)


class StatsAccumulator:
    """Running float64 sums for mean and covariance, so features need not be kept."""

    def __init__(self) -> None:
        self.n = 0
        self._sum: Tensor | None = None
        self._outer: Tensor | None = None

    def update(self, features: Tensor | np.ndarray) -> None:
        f = torch.as_tensor(features).detach().to(dtype=torch.float64)
        if f.ndim != 2:
            raise ValueError(f"features must be [N, D], got shape {tuple(f.shape)}")
        if self._sum is None:
            self._sum = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self._outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        self._sum += f.sum(0)
        self._outer += f.T @ f
        self.n += f.shape[0]

    def stats(self, what: str = "features") -> FeatureStats:
        if self.n < 2 or self._sum is None or self._outer is None:
            raise ValueError(f"{what}: a covariance needs at least 2 samples, got {self.n}")
        mu = self._sum / self.n
        sigma = (self._outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return FeatureStats(mu.cpu().numpy(), sigma.cpu().numpy(), self.n)


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance between two Gaussians (float64); ``>= 0`` up to rounding."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    s1, s2 = a.sigma.astype(np.float64), b.sigma.astype(np.float64)
    root = _sqrt_psd(s1)
    middle = root @ s2 @ root
    w = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(w, 0, None)).sum())
    diff = a.mu.astype(np.float64) - b.mu.astype(np.float64)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)
