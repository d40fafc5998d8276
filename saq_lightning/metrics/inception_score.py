"""Inception Score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))`` over ``splits`` equal
parts of the samples (in file order, as torch-fidelity does), from Inception's *unbiased* logits
(``fc`` without bias, as torch-fidelity, torchmetrics and ADM use)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def inception_score(logits: Tensor | np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation of the score over ``splits`` parts (needs ``N >= splits``)."""
    logits = torch.as_tensor(logits).to(torch.float64)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, classes], got shape {tuple(logits.shape)}")
    if splits < 1 or logits.shape[0] < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} samples, got {logits.shape[0]}")
    log_p = torch.log_softmax(logits, dim=1)
    scores = []
    for part in log_p.tensor_split(splits):
        log_py = torch.logsumexp(part, dim=0) - np.log(part.shape[0])
        kl = (part.exp() * (part - log_py)).sum(1).mean()
        scores.append(float(kl.exp()))
    s = np.asarray(scores)
    return float(s.mean()), float(s.std())
