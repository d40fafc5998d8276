"""Signals to a real ``python -m saq_lightning fit`` task of a SLURM job, without a cluster.

The task sees a SLURM job's variables (Lightning's ``SLURMEnvironment`` is active, as under
``srun``) and a ``PATH`` without ``scontrol``, the state of a node where the requeue cannot work
(issue 28, finding 5): every stop must then save ``requeue.ckpt`` and exit non-zero with one line
naming it and the command that resumes it. The cluster runs (real preemption, ``--no-requeue``)
are in tests/test_slurm_cluster.py.

Deadlines are generous and named: the tiny fit takes seconds on an idle machine, minutes at load 20.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from cli_run_helpers import cli_env, tiny_fit_config
from test_training_helpers import save_tiny_teacher, write_tiny_shards

from saq_lightning.lightning.slurm import REQUEUE_CKPT

STEPS = 12  # a multiple of the stopped run's checkpoint interval (4): its last.ckpt is the final one
PACE = [{"class_path": "pacing.Pace", "init_args": {"seconds": 0.4}}]
START_S = 300  # imports + config + teacher + first steps, on a machine loaded by other jobs
STOP_S = 180  # from the signal to the process's exit (one step, one save)


def slurm_env(job: str, restarts: int = 0) -> dict[str, str]:
    """A task of SLURM job ``job`` (one task), and a PATH with python but no ``scontrol``."""
    env = {k: v for k, v in cli_env().items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env.update(SLURM_JOB_ID=job, SLURM_JOB_NAME="fit", SLURM_NTASKS="1", SLURM_PROCID="0", SLURM_LOCALID="0",
               SLURM_NODEID="0", SLURM_NODELIST="node1", SLURM_STEP_ID="0", SLURM_CLUSTER_NAME="saqtest",
               SLURM_RESTART_COUNT=str(restarts), PATH=str(Path(sys.executable).parent))
    return env


def start_fit(config: Path, log: Path, env: dict[str, str], *extra: str):
    import subprocess

    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "saq_lightning", "fit", "--config", str(config), *extra],
                            cwd=Path(__file__).resolve().parents[1], env=env, stdout=handle,
                            stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float, what: str, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def catches(pid: int, sig: signal.Signals) -> bool:
    """Whether process ``pid`` has a handler installed for ``sig`` (/proc's SigCgt mask)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (int(sig) - 1) & 1)
    return False


def torch_loaded(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def step_of(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
    except Exception:  # noqa: BLE001 - absent or being written
        return -1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_signals")
    spec = save_tiny_teacher(root / "teacher")
    return root, spec, write_tiny_shards(spec, root / "shards")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the signal mask from /proc")
def test_sigusr1_during_start_up_is_kept_until_the_first_step_then_saved_not_fatal(tiny):
    """Finding 6 (a SIGUSR1 before training killed the task: FAILED 138, nothing saved) and 5 (no
    ``scontrol``: a FileNotFoundError shown as a user error)."""
    root, spec, shards = tiny
    run = root / "early"
    config = tiny_fit_config(root / "early.yaml", spec, shards, run, STEPS, extra_callbacks=PACE)
    log = root / "early.log"
    proc = start_fit(config, log, slurm_env("501"))
    try:
        wait_for(lambda: catches(proc.pid, signal.SIGUSR1), START_S, "a SIGUSR1 handler", proc)
        early = not torch_loaded(proc.pid)
        proc.send_signal(signal.SIGUSR1)
        code = proc.wait(timeout=START_S + STOP_S)
    finally:
        proc.kill()
    text = log.read_text()
    assert early, "the handler came only after torch was imported"
    assert code == 128 + signal.SIGUSR1, text[-3000:]
    saved = run.resolve() / REQUEUE_CKPT
    assert step_of(saved) == 1, text[-3000:]  # the first step boundary
    lines = [ln for ln in text.splitlines() if "was not requeued" in ln]
    assert len(lines) == 1, text[-3000:]
    assert "scontrol is not installed" in lines[0]
    assert f"Resume with: sbatch [options] slurm/fit.sbatch {config} --ckpt_path {saved}" in lines[0]


def test_sigterm_under_slurm_saves_exits_143_and_a_resubmission_continues_the_same_run(tiny):
    """Finding 1 (SIGTERM under SLURM ended the run with exit 0 at a partial student), 4 (the
    resubmission's ``--ckpt_path last`` passed over ``requeue.ckpt``) and 8 (it opened a new
    TensorBoard version). The resumed student equals an uninterrupted run's (on CPU bitwise; the
    stated tolerance is relative 1e-6)."""
    root, spec, shards = tiny
    full_config = tiny_fit_config(root / "full.yaml", spec, shards, root / "full", STEPS)
    full = start_fit(full_config, root / "full.log", slurm_env("600"))
    assert full.wait(timeout=START_S * 2) == 0, (root / "full.log").read_text()[-3000:]

    run = root / "stopped"
    config = tiny_fit_config(root / "stopped.yaml", spec, shards, run, STEPS, extra_callbacks=PACE)
    cfg = yaml.safe_load(config.read_text())  # a periodic last.ckpt every 4 steps: requeue.ckpt is newer
    cfg["trainer"]["callbacks"][-1]["init_args"]["every_n_train_steps"] = 4
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    proc = start_fit(config, root / "stopped.log", slurm_env("601"))
    try:
        wait_for(lambda: step_of(run / "ckpt" / "last.ckpt") >= 4, START_S, "last.ckpt at step 4", proc)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=STOP_S)
    finally:
        proc.kill()
    text = (root / "stopped.log").read_text()
    assert code == 128 + signal.SIGTERM, text[-3000:]
    stopped_at = step_of(run.resolve() / REQUEUE_CKPT)
    assert 4 <= stopped_at < STEPS, text[-3000:]
    assert "was not requeued" in text and "Bypassing SIGTERM" not in text

    # a new job (scancel, then sbatch again) resumes the same config with --ckpt_path last
    resumed = start_fit(config, root / "resumed.log", slurm_env("602"), "--ckpt_path", "last")
    assert resumed.wait(timeout=START_S * 2) == 0, (root / "resumed.log").read_text()[-3000:]
    picked = f"SLURM: fit resumes {run.resolve() / REQUEUE_CKPT} (step {stopped_at}), TensorBoard version(s) [0]"
    assert picked in (root / "resumed.log").read_text(), (root / "resumed.log").read_text()[-3000:]
    versions = sorted(p.name for p in (run / "tb").iterdir())
    assert versions == ["version_0"], versions  # one TensorBoard run across the two jobs
    want = torch.load(root / "full" / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    got = torch.load(run / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert got["global_step"] == want["global_step"] == STEPS
    for key, value in want["state_dict"].items():
        torch.testing.assert_close(got["state_dict"][key], value, rtol=1e-6, atol=0, msg=key)
    assert os.path.getmtime(run.resolve() / REQUEUE_CKPT) < os.path.getmtime(run / "ckpt" / "last.ckpt")
