"""The Mixed-Order Trajectory Alignment (MOTA) loss: weighted MSE plus (1 - cosine).

For a student direction ``pred`` and a target direction ``target`` (both ``[B, ...]``)::

    mse_i = mean_j (pred_ij - target_ij)^2             (j over the flattened sample)
    cos_i = <pred_i, target_i> / (|pred_i| |target_i|)
    L     = w_mse * mean_i mse_i + w_cos * mean_i (1 - cos_i)

By default the MSE is the *mean* over a sample's elements (not the sum), so its scale does not
depend on the resolution, and both parts are batch means. ``relative=True`` divides each sample's
MSE by its target's mean energy ``mean_j target_ij^2`` (the relative squared error), which also
removes the target's scale (guidance, ``eps_eff`` magnitude): for a small error ``delta``,
``1 - cos_i ~ |delta_perp|^2 / (2 |target_i|^2)``, so relative MSE and ``2 (1 - cos)`` weigh the
error orthogonal to the target alike at every resolution (docs/training.md, "Loss balance"). :func:`reduce_mota` also gives the
author's development-code reductions, per term: ``sum`` (MSE summed over elements and batch;
``sum_i (1 - cos_i)``). Both parts are computed in float32 whatever the input dtype (bf16
autocast included). Pure functions: no module state, no Lightning.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

#: below this norm a sample's cosine is taken against a norm of ``COS_EPS`` (no division by zero)
COS_EPS = 1e-8
REDUCTIONS = ("mean", "sum")


class MotaTerms(NamedTuple):
    """Per-sample parts ``[B]``: ``loss = w_mse * mse + w_cos * (1 - cos)``."""

    loss: Tensor
    mse: Tensor
    cos: Tensor


def mota_terms(pred: Tensor, target: Tensor, w_mse: float = 1.0, w_cos: float = 1.0,
               relative: bool = False) -> MotaTerms:
    """Per-sample MOTA loss, MSE and cosine similarity (float32, shape ``[B]``).

    ``relative``: the MSE of each sample over its target's mean energy (see the module doc)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if pred.ndim < 1 or pred.shape[0] == 0:
        raise ValueError(f"expected a non-empty batch [B, ...], got shape {tuple(pred.shape)}")
    p = pred.float().reshape(pred.shape[0], -1)
    q = target.float().reshape(target.shape[0], -1)
    mse = (p - q).square().mean(dim=1)
    if relative:
        mse = mse / q.square().mean(dim=1).clamp_min(COS_EPS)
    norms = (p.norm(dim=1) * q.norm(dim=1)).clamp_min(COS_EPS)
    cos = (p * q).sum(dim=1) / norms
    return MotaTerms(w_mse * mse + w_cos * (1.0 - cos), mse, cos)


def add_terms(terms: MotaTerms, extra: MotaTerms, weight: Tensor | float) -> MotaTerms:
    """Per row, ``terms + weight * extra`` (``weight`` a scalar or ``[B]``): the loss, the MSE and
    ``1 - cos`` add, so that :func:`reduce_mota`, linear in both, reduces the sum of the two losses
    under either reduction. The ``cos`` field of the result is ``1 -`` the summed cosine term."""
    return MotaTerms(terms.loss + weight * extra.loss, terms.mse + weight * extra.mse,
                     terms.cos - weight * (1.0 - extra.cos))


def mota_loss(
    pred: Tensor, target: Tensor, w_mse: float = 1.0, w_cos: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, mse, cos_term)``: batch means of the loss, of the MSE and of ``1 - cos``.

    ``total = w_mse * mse + w_cos * cos_term``.
    """
    terms = mota_terms(pred, target, w_mse, w_cos)
    return terms.loss.mean(), terms.mse.mean(), (1.0 - terms.cos).mean()


def reduce_mota(
    terms: MotaTerms,
    elements: int,
    w_mse: float,
    w_cos: float,
    mse_reduction: str = "mean",
    cos_reduction: str = "mean",
) -> tuple[Tensor, Tensor]:
    """``(loss, per_sample)`` under the per-term reductions (``mean`` or ``sum``).

    ``mse_reduction="sum"``: ``sum_i sum_j (pred_ij - target_ij)^2`` (``elements`` per sample);
    ``"mean"``: ``mean_i mse_i``. ``cos_reduction="sum"``: ``sum_i (1 - cos_i)``; ``"mean"``: its
    mean. ``per_sample`` holds each sample's share (for per-order/phase logs).
    """
    for name, r in (("mse_reduction", mse_reduction), ("cos_reduction", cos_reduction)):
        if r not in REDUCTIONS:
            raise ValueError(f"loss.{name} must be one of {REDUCTIONS}, got {r!r}")
    mse = terms.mse * elements if mse_reduction == "sum" else terms.mse
    cos = 1.0 - terms.cos
    per_sample = w_mse * mse + w_cos * cos
    loss = (w_mse * (mse.sum() if mse_reduction == "sum" else mse.mean())
            + w_cos * (cos.sum() if cos_reduction == "sum" else cos.mean()))
    return loss, per_sample


def group_means(values: Tensor, groups: Tensor) -> dict[int, Tensor]:
    """Mean of ``values`` ``[B]`` per distinct integer in ``groups`` ``[B]`` (e.g. per solver order)."""
    if values.shape != groups.shape:
        raise ValueError(f"values {tuple(values.shape)} and groups {tuple(groups.shape)} differ in shape")
    out: dict[int, Tensor] = {}
    for g in torch.unique(groups.detach()).tolist():
        out[int(g)] = values[groups == g].mean()
    return out
