"""Per-block reconstruction loss, per row (calibration sample).

``w_mse`` term: BRECQ's normalisation, the squared error summed over the channel dimension and
averaged over the rest (pixels, tokens), summed over the block's output tensors. This is the scale
the lineage's rounding weight (0.01) was chosen against: summing over pixels too would make the
reconstruction term ``H*W`` times larger and leave the regulariser too weak to round hard.
``w_cos`` term: ``1 - cos`` over all outputs of the row flattened together.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _channel_sum_mean(d: Tensor) -> Tensor:
    sq = d.pow(2)
    if sq.ndim <= 2:
        return sq.reshape(sq.shape[0], -1).sum(1)
    return sq.sum(1).reshape(sq.shape[0], -1).mean(1)


def per_row_loss(out: Sequence[Tensor], target: Sequence[Tensor], w_mse: float, w_cos: float) -> Tensor:
    """``w_mse * sq. error + w_cos * (1 - cos(out, target))`` per row (fp32)."""
    if len(out) != len(target):
        raise RuntimeError(f"block returned {len(out)} tensors, the FP block {len(target)}")
    loss = sum(_channel_sum_mean(o.float() - t.float()) for o, t in zip(out, target, strict=True)) * w_mse
    if w_cos:
        o = torch.cat([x.float().flatten(1) for x in out], dim=1)
        t = torch.cat([y.float().flatten(1) for y in target], dim=1)
        loss = loss + w_cos * (1.0 - torch.nn.functional.cosine_similarity(o, t, dim=1, eps=1e-8))
    return loss
