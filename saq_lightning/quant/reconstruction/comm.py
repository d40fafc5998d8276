"""The collective operations reconstruction needs (all-reduce of sums), a no-op on one rank."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Comm:
    """This process's place among the ranks of a data-parallel reconstruction."""

    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        if self.distributed:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        return t

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def owns(self, sample: int) -> bool:
        """Calibration sample ``sample`` is recorded and trained on by rank ``sample % world_size``."""
        return sample % self.world_size == self.rank
