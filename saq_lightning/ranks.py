"""This process's place among the ranks of ``torch.distributed``. Imports nothing of the package."""

from __future__ import annotations

import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
