"""Low-rank weight delta that is merged into the weight *before* the weight quantizer.

For a conv, ``A`` has the base kernel (``[r, in/groups, kh, kw]``, i.e. a conv with the base
kernel/stride/padding) and ``B`` is a 1x1 conv (``[out, r]``); ``conv_B(conv_A(x))`` equals
``conv(x, B @ A)``, so the adapter is exactly the weight delta ``scaling * B @ A``. The student
quantizes ``W + delta``: after training the result is one integer weight, no FP side branch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LoRA(nn.Module):
    """``delta() = scaling * (B @ A)`` reshaped to the base weight's shape. ``B`` starts at 0."""

    def __init__(self, weight_shape: tuple[int, ...] | torch.Size, rank: int, alpha: float | None = None) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.weight_shape = tuple(int(s) for s in weight_shape)
        out_features, fan_in = self.weight_shape[0], math.prod(self.weight_shape[1:])
        self.rank = int(rank)
        self.alpha = float(alpha) if alpha is not None else float(rank)
        self.scaling = self.alpha / self.rank
        self.A = nn.Parameter(torch.empty((rank,) + self.weight_shape[1:]))
        self.B = nn.Parameter(torch.zeros(out_features, rank))
        # same init as a default nn.Linear / nn.Conv2d weight of fan_in inputs
        nn.init.kaiming_uniform_(self.A.view(rank, fan_in), a=math.sqrt(5))

    def delta(self) -> Tensor:
        # fp32 even inside an autocast region: the delta feeds the weight quantizer
        dev = self.A.device.type
        if torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return self._delta()
        return self._delta()

    def _delta(self) -> Tensor:
        return (self.B * self.scaling).matmul(self.A.flatten(1)).view(self.weight_shape)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}, weight_shape={self.weight_shape}"
