"""One process-group set-up for every command (``saq_lightning/distributed.py``): where the ranks
meet is Lightning's ``SLURMEnvironment`` rule, as a pure function of the environment, so that
``ptq``/``sample`` under a plain ``srun`` meet on the job's first node as ``fit`` does (``ptq`` used
to meet on 127.0.0.1 and ``slurm/ptq.sbatch`` exported MASTER_ADDR to work round it)."""

from __future__ import annotations

import os
import random
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.fabric.plugins.environments import SLURMEnvironment

from saq_lightning.distributed import (
    Placement,
    environment_placement,
    init_process_group,
    rendezvous_address,
    requeue_id,
)

SRUN_TASK = {"SLURM_JOB_ID": "4242", "SLURM_NODELIST": "node[07-08]", "SLURM_STEP_ID": "0",
             "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ("127.0.0.1", 12910)),                                                   # one machine, no SLURM
    ({"MASTER_ADDR": "head", "MASTER_PORT": "2222", **SRUN_TASK}, ("head", 2222)),  # what the user set wins
    (SRUN_TASK, ("node07", 19242)),                                 # first node, 15000 + the job id's last 4 digits
    ({"SLURM_JOB_ID": "1234567", "SLURM_NODELIST": "gpu-a[003-005,9],cpu1"}, ("gpu-a003", 19567)),
    ({"SLURM_JOB_ID": "88", "SLURM_NODELIST": "n1,n2", "MASTER_ADDR": "n2"}, ("n2", 15088)),
], ids=["local", "master-set", "srun-task", "ranges", "address-set"])
def test_the_ranks_meet_by_lightnings_node_and_port_rule(env, expected):
    assert rendezvous_address(env) == expected


@pytest.mark.filterwarnings("ignore:The `srun` command is available")  # this test is not run under srun
@pytest.mark.parametrize("env", [SRUN_TASK, {"SLURM_JOB_ID": "1234567", "SLURM_NODELIST": "gpu-a[003-005,9],cpu1"},
                                 {"MASTER_ADDR": "head", "MASTER_PORT": "2222", **SRUN_TASK}])
def test_the_rule_agrees_with_lightnings_slurm_environment(env, monkeypatch):
    for name in ("MASTER_ADDR", "MASTER_PORT", *SRUN_TASK):
        monkeypatch.setenv(name, "unset")  # recorded, so that teardown removes what Lightning sets
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    lightning = SLURMEnvironment()
    assert rendezvous_address(dict(os.environ)) == (lightning.main_address, lightning.main_port)


def test_an_srun_task_without_master_addr_does_not_meet_on_localhost():
    assert environment_placement(SRUN_TASK) == Placement(1, 2, 0)
    assert rendezvous_address(SRUN_TASK)[0] == "node07"


@pytest.mark.parametrize(("env", "expected"), [
    ({"SLURM_JOB_ID": "51"}, "51"),
    ({"SLURM_JOB_ID": "53", "SLURM_ARRAY_JOB_ID": "50", "SLURM_ARRAY_TASK_ID": "3"}, "50_3"),
])
def test_requeue_id_names_an_array_element_by_its_array_and_task(env, expected):
    assert requeue_id(env) == expected


def test_one_process_makes_no_process_group():
    assert init_process_group(None, torch.device("cpu")) is False
    assert init_process_group(Placement(0, 1, 0), torch.device("cpu")) is False
    assert not dist.is_initialized()


def _free_slurm_job_id() -> str:
    """A job id whose derived port (15000 + last four digits) is free on this machine now."""
    for _ in range(200):
        job = str(random.randrange(1000, 10000))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 15000 + int(job)))
            except OSError:
                continue
            return job
    raise RuntimeError("no free port in 16000..24999")


def _srun_task(rank: int, env: dict[str, str], out: str) -> None:
    os.environ.update({**env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)})
    placement = environment_placement()
    assert init_process_group(placement, torch.device("cpu"))
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    torch.save({"rank": dist.get_rank(), "world": dist.get_world_size(), "sum": float(value)}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_srun_tasks_meet_with_gloo_on_the_first_node_of_the_nodelist(tmp_path):
    """Two real processes with an srun step's variables and no MASTER_ADDR/MASTER_PORT."""
    env = {"SLURM_JOB_ID": _free_slurm_job_id(), "SLURM_NODELIST": "127.0.0.1", "SLURM_STEP_ID": "0",
           "SLURM_STEP_NUM_TASKS": "2", "OMP_NUM_THREADS": "1"}
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        assert name not in env
    saved = {k: os.environ.pop(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE") if k in os.environ}
    try:
        mp.start_processes(_srun_task, args=(env, str(tmp_path / "out")), nprocs=2, join=True, start_method="spawn")
    finally:
        os.environ.update(saved)
    results = [torch.load(tmp_path / f"out.{r}") for r in (0, 1)]
    assert [(r["rank"], r["world"], r["sum"]) for r in results] == [(0, 2, 3.0), (1, 2, 3.0)]
