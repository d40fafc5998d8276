"""Where a pipeline process sits among its peers: rank, world size, local rank (one function).

The pipeline commands (``generate``, ``sample``) are started one process per device by
``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) or by ``srun`` without torchrun (SLURM's
``SLURM_PROCID``/``SLURM_STEP_NUM_TASKS``/``SLURM_LOCALID``). Only a task of an ``srun`` step counts:
the batch script itself also sees ``SLURM_NTASKS`` and ``SLURM_PROCID=0``, and taking those would
make a command run outside ``srun`` believe it is rank 0 of several.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from saq_lightning.lightning.early_signals import take_early_signal


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
    """``MASTER_ADDR``/``MASTER_PORT`` when set, else what Lightning's ``SLURMEnvironment`` derives
    (first host of the step's node list, 15000 + the last four digits of the job id), so that a
    pipeline command and ``fit`` rendezvous alike under srun."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    env = os.environ if env is None else env
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_NODELIST") or "127.0.0.1"
    address = env.get("MASTER_ADDR") or SLURMEnvironment.resolve_root_node_address(nodes)
    job = env.get("SLURM_JOB_ID")
    port = int(env["MASTER_PORT"]) if "MASTER_PORT" in env else (15000 + int(job[-4:]) if job else 12910)
    return address, port


def init_process_group(placement: Placement | None) -> bool:
    """Join the process group of ``placement`` unless one exists (or there is one process);
    returns whether this call created it."""
    if placement is None or placement.world_size <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(placement.local_rank % torch.cuda.device_count())
    if "MASTER_ADDR" in os.environ and "RANK" in os.environ:  # torchrun: env:// has it all
        dist.init_process_group(backend)
    else:
        address, port = rendezvous_address()
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=placement.rank,
                                world_size=placement.world_size)
    return True


def requeue_on_sigusr1(env: Mapping[str, str] | None = None) -> bool:
    """Under an srun step of a batch job: SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``, a preemption)
    makes task 0 run ``scontrol requeue`` and every task exit at once. ``generate`` and ``sample``
    keep what they finished (shards and chunks appear atomically), so the requeued start continues
    where they were; without this, SIGUSR1's default action would end the job as failed. Returns
    whether the handler was installed."""
    env = os.environ if env is None else env
    if "SLURM_STEP_ID" not in env or "SLURM_JOB_ID" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return False
    job = (f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" if env.get("SLURM_ARRAY_TASK_ID")
           else env["SLURM_JOB_ID"])
    first = env.get("SLURM_PROCID", "0") == "0"

    def handler(signum: int, frame: object) -> None:
        if first:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
            print(f"SLURM: signal {signum}: requeued job {job}" if done.returncode == 0 else
                  f"SLURM: signal {signum}: `scontrol requeue {job}` failed: {done.stderr.strip()}", flush=True)
        sys.stdout.flush()
        os._exit(0)  # finished work is on disk; a half-done shard/chunk is redone on the next start

    signal.signal(signal.SIGUSR1, handler)
    if take_early_signal([signal.SIGUSR1]) is not None:  # arrived during start-up (lightning/early_signals.py)
        handler(signal.SIGUSR1, None)
    return True
