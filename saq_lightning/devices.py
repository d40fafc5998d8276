"""The one rule for which device a process runs on.

``auto`` is this process's GPU when CUDA is available (``cuda:<local rank>``, wrapped round the
visible devices, so that one process per device under ``torchrun``/``srun`` gets its own), else
the CPU; ``cuda`` is the same GPU and an error without one; any other name (``cpu``, ``cuda:1``,
``mps``) is taken as torch names it. ``generate``, ``ptq``, ``sample``, ``evaluate`` and
``diagnose`` all choose their device here.

Imports nothing of the package but the leaf ``errors.py``: every layer may import it.
"""

from __future__ import annotations

import torch

from saq_lightning.errors import UserError


class DeviceError(UserError, RuntimeError):
    """A device was asked for that this machine does not have."""


def choose_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """The device ``name`` means for the process of local rank ``local_rank`` (see the module
    docstring)."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda"):
        if not torch.cuda.is_available():
            raise DeviceError("device cuda was asked for, but no CUDA device is available here "
                              "(use cpu or auto)")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)
