"""The noise-predictor contract every sampler calls, and adapters to it.

A noise predictor is ``model(x, t, cond) -> eps`` with ``t`` a continuous-time tensor ``[B]``
(the time of *this* evaluation: a quantized student picks its per-timestep activation scales from
it; samplers never keep a hidden step counter). ``discrete_model`` adapts a function of the
model timestep (what diffusers UNets take) to it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import Tensor

from .errors import GridError, ModelOutputError, ModelOutputTypeError
from .schedules import DiscreteSchedule, compute_dtype


class NoisePredictor(Protocol):
    def __call__(self, x: Tensor, t: Tensor, cond: Any) -> Tensor: ...


EpsFn = Callable[[Tensor, Tensor, Any], Tensor]


@dataclass(frozen=True)
class DiscreteModel:
    """``model(x, t, cond) = eps_fn(x, schedule.model_timestep(t), cond)``.

    ``eps_fn`` takes the model timestep on the training index scale ``0 .. N-1`` as a float
    tensor ``[B]`` (``t * N - 1``; between grid knots it is fractional, as in DPM-Solver).
    """

    eps_fn: EpsFn
    schedule: DiscreteSchedule

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.eps_fn(x, self.schedule.model_timestep(t).to(device=x.device), cond)


def discrete_model(eps_fn: EpsFn, schedule: DiscreteSchedule) -> DiscreteModel:
    """Adapt ``eps_fn(x, timestep, cond)`` (model-timestep scale) to the continuous-time contract."""
    return DiscreteModel(eps_fn, schedule)


class Evaluation(NamedTuple):
    """One model evaluation: the point ``(x, t)``, the prediction ``eps`` and where it happened.

    ``index`` holds the batch rows evaluated (``None``: the whole batch); ``step`` the solver step
    it belongs to (``-1`` outside a sampling loop).
    """

    x: Tensor
    t: Tensor
    eps: Tensor
    index: Tensor | None = None
    step: int = -1


def select_batch(cond: Any, index: Tensor | None, batch_size: int) -> Any:
    """The rows ``index`` of a batched condition (tensor, mapping, list/tuple of them, or ``None``).

    Tensors whose first dimension is not ``batch_size`` (e.g. a shared embedding) and
    non-tensor leaves pass through unchanged.
    """
    if index is None or cond is None:
        return cond
    if isinstance(cond, Tensor):
        if cond.ndim >= 1 and cond.shape[0] == batch_size:
            return cond[index.to(cond.device)]
        return cond
    if isinstance(cond, Mapping):
        return type(cond)({k: select_batch(v, index, batch_size) for k, v in cond.items()})
    if isinstance(cond, (list, tuple)):
        if len(cond) == batch_size and not any(isinstance(c, (Tensor, Mapping)) for c in cond):
            return type(cond)(cond[i] for i in index.tolist())
        return type(cond)(select_batch(c, index, batch_size) for c in cond)
    return cond


def evaluate(model: NoisePredictor, x: Tensor, t: Tensor, cond: Any) -> Tensor:
    """Call ``model(x, t, cond)`` and check that it returned a tensor of ``x``'s shape."""
    eps = model(x, t, cond)
    if not isinstance(eps, Tensor):
        raise ModelOutputTypeError(
            f"the noise predictor must return a torch.Tensor (eps), got {type(eps).__name__}"
        )
    if eps.shape != x.shape:
        raise ModelOutputError(
            f"the noise predictor returned shape {tuple(eps.shape)} for x of shape {tuple(x.shape)}; "
            "expected eps with exactly the shape of x"
        )
    return eps


def batch_times(t: Tensor | float, batch_size: int, like: Tensor, name: str = "t") -> Tensor:
    """``t`` as a ``[B]`` tensor on ``like``'s device, in its coefficient dtype (float32 at least)."""
    dtype = compute_dtype(like.dtype)
    if not isinstance(t, Tensor):
        t = torch.as_tensor(t, dtype=torch.float64)
    t = t.to(dtype=dtype).to(device=like.device)
    if t.ndim == 0:
        return t.expand(batch_size)
    if t.ndim == 1 and t.shape[0] in (1, batch_size):
        return t.expand(batch_size)
    raise GridError(f"{name} must be a scalar or a [B] = [{batch_size}] tensor, got shape {tuple(t.shape)}")
