"""Improved precision and recall (Kynkaanniemi et al. 2019) on k-NN feature manifolds.

Each feature vector of a set gets a ball whose radius is the distance to its ``k``-th nearest
neighbour in the same set (``k = 3`` as in the paper and ADM). *Precision* is the fraction of
samples inside at least one ball around a reference feature (are samples realistic?); *recall*
the fraction of reference features inside at least one ball around a sample (is the reference
covered?). Distances are computed in row blocks, so memory is ``O(block * N)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def knn_radii(features: Tensor, k: int = 3, block: int = 1024) -> Tensor:
    """Distance of every row to its ``k``-th nearest other row (``[N]``)."""
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} feature vectors, got {n}")
    out = []
    for rows in features.split(block):
        d = torch.cdist(rows, features)
        out.append(d.kthvalue(k + 1, dim=1).values)  # the (k+1)-th smallest includes the row itself
    return torch.cat(out)


def coverage_fraction(queries: Tensor, centers: Tensor, radii: Tensor, block: int = 1024) -> float:
    """Fraction of ``queries`` within distance ``radii[i]`` of some ``centers[i]`` (boundary included)."""
    inside = []
    for rows in queries.split(block):
        d = torch.cdist(rows, centers)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(
    reference: Tensor | np.ndarray, samples: Tensor | np.ndarray, k: int = 3, block: int = 1024
) -> tuple[float, float]:
    """``(precision, recall)`` of ``samples`` against ``reference`` features (``[N, D]`` each)."""
    real = torch.as_tensor(reference).to(torch.float64)
    fake = torch.as_tensor(samples).to(device=real.device, dtype=torch.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be [N, D] with equal D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    for name, f in (("reference", real), ("samples", fake)):
        if f.shape[0] <= k:
            raise ValueError(f"precision/recall with k={k} needs more than {k} {name}, got {f.shape[0]}")
    precision = coverage_fraction(fake, real, knn_radii(real, k, block), block)
    recall = coverage_fraction(real, fake, knn_radii(fake, k, block), block)
    return precision, recall
