"""One process group set-up for every command, on the rule Lightning's ``fit`` uses.

Where a process sits (:func:`environment_placement`): ``torchrun`` (``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``) or a task of an ``srun`` step (``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``/
``SLURM_LOCALID``). Only a task of an ``srun`` step counts: the batch script itself also sees
``SLURM_NTASKS`` and ``SLURM_PROCID=0``, and taking those would make a command run outside
``srun`` believe it is rank 0 of several.

Where the ranks meet (:func:`rendezvous_address`): Lightning's ``SLURMEnvironment`` rule, so that
``generate``/``ptq``/``sample`` meet where ``fit`` does under the same job: ``MASTER_ADDR`` when
set, else the first host of ``SLURM_NODELIST`` (``127.0.0.1`` outside SLURM); ``MASTER_PORT``
when set, else 15000 + the last four digits of ``SLURM_JOB_ID`` (12910 outside SLURM).

:func:`requeue_id` is the job ``scontrol requeue`` takes (an array element as ``<array>_<task>``).

Imports nothing of the package: every layer may import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import SLURMEnvironment

#: Lightning's port outside SLURM and base of the port derived from the job id
DEFAULT_PORT = 12910
SLURM_PORT_BASE = 15000


@dataclass(frozen=True)
class Placement:
    rank: int
    world_size: int
    local_rank: int


def environment_placement(env: Mapping[str, str] | None = None) -> Placement | None:
    """Rank and world size from torchrun or from an srun step; ``None`` for a single process."""
    env = os.environ if env is None else env
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return Placement(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0")))
    if "SLURM_STEP_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return Placement(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]),
                         int(env.get("SLURM_LOCALID", "0")))
    return None


def rendezvous_address(env: Mapping[str, str] | None = None) -> tuple[str, int]:
    """``(address, port)`` where the ranks meet: Lightning's rule (see the module docstring)."""
    env = os.environ if env is None else env
    address = env.get("MASTER_ADDR") or SLURMEnvironment.resolve_root_node_address(
        env.get("SLURM_NODELIST", "127.0.0.1"))
    if "MASTER_PORT" in env:
        return address, int(env["MASTER_PORT"])
    job = env.get("SLURM_JOB_ID")
    return address, (SLURM_PORT_BASE + int(job[-4:]) if job is not None else DEFAULT_PORT)


def requeue_id(env: Mapping[str, str] | None = None) -> str:
    """The id ``scontrol requeue`` takes for this job: ``<array job>_<task>`` for an array element."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def init_process_group(placement: Placement | None, device: torch.device,
                       env: Mapping[str, str] | None = None) -> bool:
    """Join the process group of ``placement`` unless one exists (or there is one process), NCCL
    for a CUDA ``device`` and gloo otherwise; returns whether this call created it."""
    if placement is None or placement.world_size <= 1 or dist.is_initialized():
        return False
    env = os.environ if env is None else env
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if "MASTER_ADDR" in env and "RANK" in env:  # torchrun: env:// (its agent's store) has it all
        dist.init_process_group(backend)
    else:
        address, port = rendezvous_address(env)
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=placement.rank,
                                world_size=placement.world_size)
    return True
