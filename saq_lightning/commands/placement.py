"""Pipeline commands under SLURM: SIGUSR1 (a preemption, the time limit) requeues the job.

Where a process sits among its peers and where the ranks meet is ``saq_lightning/distributed.py``
(one rule for every command, Lightning's).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping

from saq_lightning.distributed import requeue_id
from saq_lightning.lightning.early_signals import take_early_signal


def requeue_on_sigusr1(env: Mapping[str, str] | None = None) -> bool:
    """Under an srun step of a batch job: SIGUSR1 (``#SBATCH --signal=SIGUSR1@90``, a preemption)
    makes task 0 run ``scontrol requeue`` and every task exit at once. ``generate`` and ``sample``
    keep what they finished (shards and chunks appear atomically), so the requeued start continues
    where they were; without this, SIGUSR1's default action would end the job as failed. Returns
    whether the handler was installed."""
    env = os.environ if env is None else env
    if "SLURM_STEP_ID" not in env or "SLURM_JOB_ID" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return False
    job = requeue_id(env)
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
