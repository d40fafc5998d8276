"""Classifier-free guidance: the one place its formula is written."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


def _repeat_cond(cond: Any, null_cond: Any) -> Any:
    """``cat([cond, null_cond])`` along the batch; a batch-1 ``null_cond`` is expanded to ``cond``'s batch."""
    if isinstance(cond, Tensor):
        if not isinstance(null_cond, Tensor):
            raise TypeError(f"null_cond must be a tensor like cond, got {type(null_cond).__name__}")
        null_cond = null_cond.to(cond.device)
        if null_cond.ndim == cond.ndim and null_cond.shape[0] == 1 and cond.shape[0] != 1:
            null_cond = null_cond.expand(cond.shape[0], *null_cond.shape[1:])
        if null_cond.shape[1:] != cond.shape[1:] or null_cond.shape[0] != cond.shape[0]:
            raise ValueError(
                f"null_cond must have cond's shape {tuple(cond.shape)} (or batch 1), got {tuple(null_cond.shape)}"
            )
        return torch.cat([cond, null_cond.to(cond.dtype)], dim=0)
    if isinstance(cond, Mapping):
        if not isinstance(null_cond, Mapping) or set(null_cond) != set(cond):
            raise ValueError(f"null_cond must be a mapping with cond's keys {sorted(cond)}")
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
    ``cond``/``null_cond`` are tensors (class labels, context embeddings) or dicts of them; a
    ``null_cond`` of batch 1 is expanded to the batch.
    """
    if scale == 1.0 or cond is None:
        return eps_fn(x, t, cond)
    eps = eps_fn(torch.cat([x, x], dim=0), torch.cat([t, t], dim=0), _repeat_cond(cond, null_cond))
    eps_c, eps_u = eps.chunk(2, dim=0)
    return eps_u + scale * (eps_c - eps_u)


@dataclass(frozen=True)
class GuidedModel:
    """A noise predictor with classifier-free guidance: ``model(x, t, cond)`` guided at ``scale``.

    ``null_cond`` is the unconditional condition: a tensor/dict of batch 1 or of the batch, or a
    callable ``null_cond(batch_size)`` (e.g. ``DiffusionModel.null_cond``). Works on sub-batches,
    so it can be given to any sampler.
    """

    model: Callable[[Tensor, Tensor, Any], Tensor]
    scale: float
    null_cond: Any

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        null = self.null_cond(x.shape[0]) if callable(self.null_cond) else self.null_cond
        return classifier_free_guidance(self.model, x, t, cond, null, self.scale)


def guided_model(model: Callable[[Tensor, Tensor, Any], Tensor], scale: float, null_cond: Any) -> GuidedModel:
    """Wrap a continuous-time noise predictor with classifier-free guidance."""
    return GuidedModel(model, float(scale), null_cond)
