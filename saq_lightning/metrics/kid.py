"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial
kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over random subsets (torch-fidelity's and
torchmetrics' defaults: 100 subsets of 1000)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _kernel(x: Tensor, y: Tensor, degree: int, gamma: float, coef0: float) -> Tensor:
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(x: Tensor, y: Tensor, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 between two feature sets ``[m, D]`` and ``[n, D]`` (float64)."""
    x, y = x.to(torch.float64), y.to(torch.float64)
    m, n = x.shape[0], y.shape[0]
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    kxx, kyy, kxy = (_kernel(a, b, degree, gamma, coef0) for a, b in ((x, x), (y, y), (x, y)))
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kernel_inception_distance(
    real: Tensor | np.ndarray,
    fake: Tensor | np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID mean and standard deviation over ``subsets`` random subsets (without replacement
    within a subset) of ``subset_size`` from each set. Both sets need ``>= subset_size`` rows."""
    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    if subset_size < 2:
        raise ValueError(f"KID subset_size must be >= 2, got {subset_size}")
    for name, f in (("reference", real), ("samples", fake)):
        if f.shape[0] < subset_size:
            raise ValueError(
                f"KID needs at least subset_size={subset_size} {name} features, got {f.shape[0]} "
                "(lower kid_subset_size, or use more samples)"
            )
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        i = torch.randperm(real.shape[0], generator=g)[:subset_size]
        j = torch.randperm(fake.shape[0], generator=g)[:subset_size]
        values.append(mmd2_unbiased(real[i.to(real.device)], fake[j.to(fake.device)], degree, gamma, coef0))
    v = np.asarray(values)
    return float(v.mean()), float(v.std())
