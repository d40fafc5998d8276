"""SIGTERM and SIGINT sent to a real ``python -m saq_lightning fit`` process: the run saves a
resumable ``last.ckpt`` at the step boundary, exits with 143 / 130, and ``--ckpt_path last``
then ends with the very weights of an uninterrupted run (relative tolerance 1e-6; on CPU they are
bitwise equal).
"""

from __future__ import annotations

import signal
import time

import pytest
import torch
from cli_run_helpers import run_cli, start_cli, tiny_fit_config
from test_training_helpers import save_tiny_teacher, write_tiny_shards

STEPS = 12
PACE = [{"class_path": "pacing.Pace", "init_args": {"seconds": 0.4}}]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    spec = save_tiny_teacher(root / "teacher")
    shards = write_tiny_shards(spec, root / "shards")
    config = tiny_fit_config(root / "full.yaml", spec, shards, root / "full", STEPS)
    done = run_cli(["fit", "--config", str(config)])
    assert done.returncode == 0, done.stdout + done.stderr
    return root, spec, shards, student_state(root / "full" / "ckpt" / "last.ckpt")


def student_state(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint["global_step"], checkpoint["state_dict"]


def interrupt(root, spec, shards, name, sig):
    run = root / name
    config = tiny_fit_config(root / f"{name}.yaml", spec, shards, run, STEPS, extra_callbacks=PACE)
    proc = start_cli(["fit", "--config", str(config)], root / f"{name}.log")
    last = run / "ckpt" / "last.ckpt"
    deadline = time.time() + 240
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)  # the first step's checkpoint: training runs, 0.4 s per step
    proc.send_signal(sig)
    code = proc.wait(timeout=120)
    return run, config, code, (root / f"{name}.log").read_text()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_saves_last_ckpt_exits_nonzero_and_resume_equals_uninterrupted(setup, sig, code):
    root, spec, shards, (full_step, full_state) = setup
    run, config, exit_code, log = interrupt(root, spec, shards, sig.name, sig)
    assert exit_code == code, log
    step, _ = student_state(run / "ckpt" / "last.ckpt")
    assert 1 <= step < STEPS, log  # stopped mid-run, at a step boundary
    assert f"received {sig.name}" in log and "resume with --ckpt_path last" in log
    resumed = run_cli(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not (run / "ckpt" / "last-v1.ckpt").exists()
    end_step, state = student_state(run / "ckpt" / "last.ckpt")
    assert end_step == full_step == STEPS
    assert state.keys() == full_state.keys()
    for key, value in full_state.items():
        torch.testing.assert_close(state[key], value, rtol=1e-6, atol=0, msg=key)


SLURM_ENV = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "42", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "node1"}


def test_under_slurm_sigterm_and_sigusr1_stay_lightnings(monkeypatch):
    """With Lightning's SLURM environment active only SIGINT is taken over: SIGTERM (and the
    SIGUSR1 requeue signal) keep the handlers Lightning's SLURM support installed."""
    import lightning.pytorch as pl
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from saq_lightning.callbacks.graceful_stop import GracefulStop

    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         plugins=[SLURMEnvironment(auto_requeue=True)])
    callback = GracefulStop()
    assert callback.signals(trainer) == (signal.SIGINT,)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    callback.on_train_start(trainer, None)
    try:
        assert {s: signal.getsignal(s) for s in before} == before
        assert signal.getsignal(signal.SIGINT) == callback._handle
    finally:
        callback._restore()
    for key in SLURM_ENV:
        monkeypatch.delenv(key)
    plain = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    assert GracefulStop().signals(plain) == (signal.SIGTERM, signal.SIGINT)


def test_ctrl_c_in_a_terminal_with_dataloader_workers_still_saves_and_exits_130(setup):
    """A terminal's Ctrl-C reaches the whole process group, DataLoader workers included: they must
    not die of it (the main process, waiting for its next batch, would fail on the dead workers)
    before the main process saves at the step boundary."""
    import os
    import subprocess
    import sys

    import yaml
    from cli_run_helpers import REPO, cli_env

    root, spec, shards, _ = setup
    run = root / "workers"
    config = tiny_fit_config(root / "workers.yaml", spec, shards, run, STEPS)
    values = yaml.safe_load(config.read_text())
    values["data"]["class_path"] = "slow_data.SlowDataModule"  # the main process waits on its workers
    values["data"]["init_args"].update(num_workers=2, worker_seconds=0.5)
    config.write_text(yaml.safe_dump(values, sort_keys=False))
    log = root / "workers.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "saq_lightning", "fit", "--config", str(config)],
                                cwd=REPO, env=cli_env(), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # its own process group, as a terminal's job
    last = run / "ckpt" / "last.ckpt"
    deadline = time.time() + 240
    while not last.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    code = proc.wait(timeout=120)
    text = log.read_text()
    assert code == 130, text
    assert "received SIGINT" in text and "resume with --ckpt_path last" in text
    step, _ = student_state(last)
    assert 1 <= step < STEPS, text
