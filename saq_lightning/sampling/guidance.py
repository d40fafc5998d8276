"""Classifier-free guidance: the one place its formula is written."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor


def _repeat_cond(cond: Any, null_cond: Any) -> Any:
    if isinstance(cond, Tensor):
        return torch.cat([cond, null_cond.to(cond.device)], dim=0)
    if isinstance(cond, dict):
        return {k: _repeat_cond(v, null_cond[k]) for k, v in cond.items()}
    raise TypeError(f"classifier-free guidance needs a tensor or dict condition, got {type(cond)!r}")


def classifier_free_guidance(
    eps_fn: Callable[[Tensor, Tensor, Any], Tensor],
    x: Tensor,
    t: Tensor,
    cond: Any,
    null_cond: Any,
    scale: float,
) -> Tensor:
    """``eps_u + scale * (eps_c - eps_u)`` from one batched call of size ``2B``.

    ``scale == 1`` is the plain conditional prediction and costs one call of size ``B``.
    ``cond``/``null_cond`` are tensors (class labels, context embeddings) or dicts of them.
    """
    if scale == 1.0 or cond is None:
        return eps_fn(x, t, cond)
    eps = eps_fn(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), _repeat_cond(cond, null_cond))
    eps_c, eps_u = eps.chunk(2, dim=0)
    return eps_u + scale * (eps_c - eps_u)
