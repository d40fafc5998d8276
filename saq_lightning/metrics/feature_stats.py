"""Gaussian statistics of feature sets and the Frechet distance between them (FID, sFID, FD).

``FD = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2))`` with unbiased covariances
(ADM, torch-fidelity and torchmetrics use ``ddof = 1`` too). The trace term is the sum of square
roots of the eigenvalues of ``S_1 S_2``, computed in float64 from symmetric matrices only:

* ``D x D`` (many samples): ``eigvalsh(S_1^(1/2) S_2 S_1^(1/2))``;
* when a set has ``n <= D`` samples its covariance is ``B^T B`` for the ``[n, D]`` matrix ``B`` of
  centred features / ``sqrt(n - 1)``, and ``S_1 S_2`` has the same non-zero eigenvalues as the
  ``n x n`` matrix ``B_1 S_2 B_1^T`` (or, with both bases, the squared singular values of
  ``B_1 B_2^T``) - exact, and far cheaper than a ``2048 x 2048`` eigendecomposition.

No complex arithmetic and no ``eps`` retry for singular covariances (ADM / pytorch-fid's
``sqrtm`` needs both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class FeatureStats:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` (float64) of ``n`` feature vectors;
    ``basis`` ``[n, D]`` (kept when ``n <= D``) satisfies ``basis.T @ basis == sigma``."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    basis: np.ndarray | None = None

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
    """Running float64 sums for mean and covariance; the rows themselves are kept only while
    there are no more of them than dimensions (for the low-rank distance)."""

    def __init__(self) -> None:
        self.n = 0
        self._sum: Tensor | None = None
        self._outer: Tensor | None = None
        self._rows: list[Tensor] | None = []

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
        if self._rows is not None:
            self._rows = self._rows + [f.cpu()] if self.n <= f.shape[1] else None

    def stats(self, what: str = "features") -> FeatureStats:
        if self.n < 2 or self._sum is None or self._outer is None:
            raise ValueError(f"{what}: a covariance needs at least 2 samples, got {self.n}")
        mu = self._sum / self.n
        sigma = (self._outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        basis = None
        if self._rows is not None:
            basis = ((torch.cat(self._rows) - mu.cpu()) / (self.n - 1) ** 0.5).numpy()
        return FeatureStats(mu.cpu().numpy(), sigma.cpu().numpy(), self.n, basis)


def _t(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def _sum_sqrt(eigenvalues: Tensor) -> float:
    return float(eigenvalues.clamp_min(0).sqrt().sum())


def _sym(m: Tensor) -> Tensor:
    return (m + m.T) / 2


def trace_sqrt_product(a: FeatureStats, b: FeatureStats) -> float:
    """``tr((S_a S_b)^(1/2))`` by the cheapest exact route (see the module docstring)."""
    if a.basis is not None and b.basis is not None:
        return float(torch.linalg.svdvals(_t(a.basis) @ _t(b.basis).T).sum())
    if a.basis is None and b.basis is not None:
        a, b = b, a
    if a.basis is not None:
        ba = _t(a.basis)
        return _sum_sqrt(torch.linalg.eigvalsh(_sym(ba @ _t(b.sigma) @ ba.T)))
    w, v = torch.linalg.eigh(_sym(_t(a.sigma)))
    root = (v * w.clamp_min(0).sqrt()) @ v.T
    return _sum_sqrt(torch.linalg.eigvalsh(_sym(root @ _t(b.sigma) @ root)))


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Frechet distance between two Gaussians (float64); ``>= 0`` up to rounding."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"feature dimensions differ: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    diff = a.mu.astype(np.float64) - b.mu.astype(np.float64)
    traces = float(np.trace(a.sigma)) + float(np.trace(b.sigma))
    return float(diff @ diff) + traces - 2.0 * trace_sqrt_product(a, b)
