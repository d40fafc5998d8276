"""The SLURM resume decision and the batch-script checks, without a cluster (environments as dicts).

The real preemption, requeue and resume runs are in tests/test_slurm_cluster.py.
"""

from __future__ import annotations

import io
import re
import signal

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from saq_lightning.commands.placement import requeue_on_sigusr1
from saq_lightning.commands.slurm_check import SlurmCheckError, check_fit_layout, resolve_devices
from saq_lightning.lightning.slurm import (
    BATCH_LOG_REFRESH,
    RECORD_KEY,
    SlurmResumeError,
    apply_resume,
    batch_log_progress,
    resolve_resume_ckpt,
    slurm_job,
)

JOB = {"SLURM_JOB_ID": "41", "SLURM_JOB_NAME": "fit", "SLURM_CLUSTER_NAME": "c", "SLURM_NTASKS": "2"}


def fit_config(root, lr=0.0005):
    return {"config": ["a.yaml"], "ckpt_path": None,
            "trainer": {"default_root_dir": str(root),
                        "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                                   "init_args": {"save_dir": str(root), "version": None}},
                        "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": {"dirpath": str(root / "ckpt")}}]},
            "model": {"init_args": {"optimizer": {"lr": lr}}}}


def save(path, step, job, config, version=3):
    path.parent.mkdir(parents=True, exist_ok=True)
    from saq_lightning.lightning.slurm import comparable_config

    torch.save({"global_step": step, RECORD_KEY: {"job": job, "config": comparable_config(config),
                                                   "logger_versions": [version]}}, path)


def test_outside_a_batch_job_or_interactively_fit_is_left_alone(tmp_path):
    assert resolve_resume_ckpt(fit_config(tmp_path), env={}) is None
    assert resolve_resume_ckpt(fit_config(tmp_path), env={**JOB, "SLURM_JOB_NAME": "interactive"}) is None


def test_the_first_start_of_a_job_never_resumes(tmp_path):
    config = fit_config(tmp_path)
    save(tmp_path / "ckpt" / "last.ckpt", 8, "c:41", config)
    run = resolve_resume_ckpt(config, env=JOB)
    assert run.job == "c:41" and run.resume is None


def test_a_requeued_start_takes_the_newest_checkpoint_of_its_own_job(tmp_path):
    config = fit_config(tmp_path)
    save(tmp_path / "requeue.ckpt", 5, "c:41", config)
    save(tmp_path / "ckpt" / "last.ckpt", 8, "c:41", config, version=3)
    save(tmp_path / "ckpt" / "last-v1.ckpt", 12, "c:99", config)  # another job's: never taken
    (tmp_path / "ckpt" / "last-v2.ckpt").write_bytes(b"cut short by a kill")  # unreadable: skipped
    run = resolve_resume_ckpt(config, env={**JOB, "SLURM_RESTART_COUNT": "1"})
    assert run.resume.path == tmp_path / "ckpt" / "last.ckpt" and run.resume.global_step == 8
    assert resolve_resume_ckpt({**config, "ckpt_path": "last"}, env={**JOB, "SLURM_RESTART_COUNT": "1"}).resume == run.resume
    assert resolve_resume_ckpt({**config, "ckpt_path": "x.ckpt"}, env={**JOB, "SLURM_RESTART_COUNT": "1"}).resume is None

    from jsonargparse import Namespace

    namespace = Namespace(ckpt_path=None)
    namespace["trainer.logger"] = Namespace(class_path="TensorBoardLogger", init_args=Namespace(version=None))
    apply_resume(namespace, run)
    assert namespace.ckpt_path == str(tmp_path / "ckpt" / "last.ckpt")
    assert namespace.trainer.logger.init_args.version == 3  # the same TensorBoard run


def test_on_a_tie_of_steps_the_requeue_checkpoint_wins_over_a_newer_last_ckpt(tmp_path):
    """A stopped run may write last.ckpt at the signal's step after requeue.ckpt, as it winds down."""
    config = fit_config(tmp_path)
    save(tmp_path / "requeue.ckpt", 6, "c:41", config)
    save(tmp_path / "ckpt" / "last.ckpt", 6, "c:41", config)  # written later: the newer file
    run = resolve_resume_ckpt(config, env={**JOB, "SLURM_RESTART_COUNT": "1"})
    assert run.resume.path == tmp_path / "requeue.ckpt" and run.resume.global_step == 6


def test_a_requeued_job_whose_config_changed_gets_every_changed_field(tmp_path):
    save(tmp_path / "requeue.ckpt", 5, "c:41", fit_config(tmp_path))
    with pytest.raises(SlurmResumeError, match=r"model\.init_args\.optimizer\.lr: expected 0\.0005, found 0\.001"):
        resolve_resume_ckpt(fit_config(tmp_path, lr=0.001), env={**JOB, "SLURM_RESTART_COUNT": "2"})


def test_job_arrays_resume_per_array_element():
    env = {**JOB, "SLURM_ARRAY_JOB_ID": "40", "SLURM_ARRAY_TASK_ID": "3"}
    assert slurm_job(env) == "c:40_3"


def test_progress_bars_refresh_rarely_when_stdout_is_not_a_terminal(tmp_path):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, rate in ((io.StringIO(), BATCH_LOG_REFRESH), (Tty(), 1)):
        trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                             callbacks=[TQDMProgressBar(refresh_rate=1)])
        batch_log_progress(trainer, stream)
        assert trainer.progress_bar_callback.refresh_rate == rate
    rich = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
    batch_log_progress(rich, io.StringIO())
    assert rich.progress_bar_callback.refresh_rate == 100  # Rich's default: already rare


@pytest.mark.parametrize("devices, accelerator, expected", [
    (2, "cpu", 2), ("4", "gpu", 4), ([0, 1, 2], "gpu", 3), ("0,1", "gpu", 2), ("auto", "cpu", 1)])
def test_devices_are_counted_as_lightning_counts_them(devices, accelerator, expected):
    assert resolve_devices(devices, accelerator) == expected


def test_ntasks_per_node_must_equal_the_trainer_devices():
    env = {"SLURM_NTASKS_PER_NODE": "8", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2"}
    assert check_fit_layout({"devices": 8, "num_nodes": 2}, env) == "2 node(s) x 8 task(s), one per device"
    with pytest.raises(SlurmCheckError, match=r"--ntasks-per-node=8 but trainer.devices is 4"):
        check_fit_layout({"devices": 4, "num_nodes": 2}, env)
    with pytest.raises(SlurmCheckError, match=r"2 node\(s\) but trainer.num_nodes is 1"):
        check_fit_layout({"devices": 8, "num_nodes": 1}, env)
    with pytest.raises(SlurmCheckError, match="without --ntasks-per-node"):
        check_fit_layout({"devices": 2}, {"SLURM_NTASKS": "2"})


def test_sigusr1_in_an_srun_step_of_a_pipeline_command_requeues_the_job_and_exits(tmp_path):
    """generate/sample: task 0 runs `scontrol requeue <job>` (a stand-in scontrol on PATH records it)."""
    import os
    import subprocess
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'called'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    code = ("import os, signal, time\nfrom saq_lightning.commands.placement import requeue_on_sigusr1\n"
            "assert requeue_on_sigusr1()\nos.kill(os.getpid(), signal.SIGUSR1)\ntime.sleep(30)\nraise SystemExit(3)\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "77",
           "SLURM_PROCID": "0", "SLURM_JOB_NAME": "sample"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and "requeued job 77" in done.stdout
    assert (tmp_path / "called").read_text().split() == ["requeue", "77"]
    assert not requeue_on_sigusr1({})  # outside an srun step nothing is installed


class _LoggedSteps(pl.LightningModule):
    """Logs ``train/loss`` every step; at step ``at`` it raises the requeue flag (as SIGUSR1 would)."""

    def __init__(self, requeue, at: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.requeue, self.at = requeue, at

    def training_step(self, batch, batch_idx):
        if self.global_step == self.at:
            self.requeue.received = int(signal.SIGUSR1)
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=4)


def test_the_requeue_comes_after_the_saved_steps_scalars_are_in_the_tensorboard_file(tmp_path, monkeypatch):
    """`scontrol requeue` ends the job: every step up to the saved one must be on disk by then (the
    resumed run starts after it). A stand-in scontrol copies the event files at the moment it is called."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from saq_lightning.lightning.slurm import REQUEUE_CKPT, SlurmRequeue, SlurmRun

    bin_dir, tb, snapshot = tmp_path / "bin", tmp_path / "tb", tmp_path / "at_requeue"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\ncp -r {tb} {snapshot}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    requeue = SlurmRequeue(SlurmRun(job="41", config={}, resume=None))
    trainer = pl.Trainer(max_steps=12, logger=TensorBoardLogger(str(tb), name="", version=0), log_every_n_steps=1,
                         callbacks=[requeue], default_root_dir=str(tmp_path), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    with pytest.raises(SystemExit):  # a stopped run never ends as if it had finished
        trainer.fit(_LoggedSteps(requeue, at=5))
    saved = torch.load(tmp_path / REQUEUE_CKPT, weights_only=False)["global_step"]
    events = sorted(snapshot.rglob("events.out.tfevents.*"))
    assert events, "scontrol ran before anything was written"
    acc = EventAccumulator(str(events[0]), size_guidance={"scalars": 0})
    acc.Reload()
    assert saved == 6 and [e.step for e in acc.Scalars("train/loss")] == list(range(saved))


def test_a_new_job_resuming_a_checkpoint_of_the_same_run_continues_its_tensorboard_version(tmp_path):
    """Issue 28, finding 8: a resubmission after `scancel` (a new job, restart 0) opened version_1."""
    config = fit_config(tmp_path)
    save(tmp_path / "ckpt" / "last.ckpt", 8, "c:41", config, version=3)
    save(tmp_path / "requeue.ckpt", 9, "c:41", config, version=3)
    new_job = {**JOB, "SLURM_JOB_ID": "42"}
    explicit = resolve_resume_ckpt({**config, "ckpt_path": str(tmp_path / "ckpt" / "last.ckpt")}, env=new_job)
    assert explicit.resume.path == tmp_path / "ckpt" / "last.ckpt" and explicit.resume.logger_versions == [3]
    last = resolve_resume_ckpt({**config, "ckpt_path": "last"}, env=new_job)
    assert last.resume.path == tmp_path / "requeue.ckpt" and last.resume.global_step == 9  # the newest
    other = fit_config(tmp_path, lr=0.001)  # another run in the same folder: its version is not taken
    assert resolve_resume_ckpt({**other, "ckpt_path": str(tmp_path / "requeue.ckpt")}, env=new_job).resume is None
    assert resolve_resume_ckpt({**other, "ckpt_path": "last"}, env=new_job).resume is None


class _Recorder(pl.Callback):
    """Appended after every other callback: what ran after the requeue's save."""

    def __init__(self) -> None:
        self.hooks: list[tuple[str, int]] = []

    def on_validation_start(self, trainer, pl_module) -> None:
        self.hooks.append(("validation", trainer.global_step))

    def on_train_end(self, trainer, pl_module) -> None:
        self.hooks.append(("train_end", trainer.global_step))


def test_the_stop_for_a_requeue_comes_before_any_other_end_of_run_work(tmp_path, monkeypatch):
    """Finding 2: the requeue waited for the evaluation callbacks' end-of-training work (minutes)
    and they logged scalars at the preemption step. Here the evaluation callbacks would crash on
    this plain module if their hooks ran at all; the run exits at the next hook, before validation."""
    import sys as _sys
    from pathlib import Path as _Path

    from saq_lightning.callbacks.digits_fd import DigitsFDCallback
    from saq_lightning.callbacks.trajectory_deviation import TrajectoryDeviationCallback
    from saq_lightning.lightning.slurm import SlurmRequeue, SlurmRun, configure_trainer

    monkeypatch.setenv("PATH", str(_Path(_sys.executable).parent))  # no scontrol: the requeue fails
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    recorder = _Recorder()
    trainer = pl.Trainer(max_steps=12, logger=False, default_root_dir=str(tmp_path), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         val_check_interval=1, limit_val_batches=1, num_sanity_val_steps=0,
                         callbacks=[DigitsFDCallback(every_n_train_steps=4, num_samples=10),
                                    TrajectoryDeviationCallback(every_n_train_steps=4), recorder])
    configure_trainer(trainer, SlurmRun(job="c:41", config={}, resume=None), stream=io.StringIO())
    requeue = trainer.callbacks[0]
    assert isinstance(requeue, SlurmRequeue)

    class Module(_LoggedSteps):
        def validation_step(self, batch, batch_idx):
            return None

        val_dataloader = _LoggedSteps.train_dataloader

    with pytest.raises(SystemExit) as stopped:
        trainer.fit(Module(requeue, at=3))  # the flag is up during step 3: saved at global step 4
    assert stopped.value.code == 128 + signal.SIGUSR1
    assert torch.load(tmp_path / "requeue.ckpt", weights_only=False)["global_step"] == 4
    assert ("validation", 4) not in recorder.hooks and ("train_end", 4) not in recorder.hooks
    assert recorder.hooks == [("validation", s) for s in range(1, 4)]


def test_a_batch_log_gets_a_plain_progress_line_with_step_loss_rate_and_eta(tmp_path):
    """Finding 9: off a terminal the bars printed nothing for minutes."""
    from saq_lightning.callbacks.step_progress import ProgressLines
    from saq_lightning.lightning.slurm import configure_trainer

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, added in ((io.StringIO(), True), (Tty(), False)):
        trainer = pl.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False)
        configure_trainer(trainer, None, stream=stream)
        assert any(isinstance(cb, ProgressLines) for cb in trainer.callbacks) is added
    out = io.StringIO()
    trainer = pl.Trainer(max_steps=6, logger=False, default_root_dir=str(tmp_path), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                         callbacks=[ProgressLines(interval_s=0.0, stream=out)])
    trainer.fit(_LoggedSteps(requeue=None, at=-1))
    lines = out.getvalue().splitlines()
    assert len(lines) == 6, lines
    assert re.fullmatch(r"train step 6/6 \| loss \d\S* \| \d\S* steps/s \| ETA 0:00:00", lines[-1]), lines[-1]
    assert all(line.startswith(f"train step {i}/6 | loss ") for i, line in enumerate(lines, 1))


def test_the_pre_srun_check_of_a_fit_reads_the_yaml_without_importing_torch_or_lightning(tmp_path):
    """Finding 7: ``slurm_check`` before ``srun`` parsed the config with LightningCLI (46-71 s at load
    13, on every restart); the task compares the config with its checkpoint itself."""
    import subprocess
    import sys

    config = tmp_path / "fit.yaml"
    config.write_text("trainer:\n  accelerator: cpu\n  devices: 2\n  max_steps: 5\nmodel: {}\n")
    code = ("import sys\nfrom saq_lightning.commands.slurm_check import check\n"
            f"print(check('fit', ['--config', {str(config)!r}, '--trainer.num_nodes=1'], "
            "{'SLURM_NTASKS_PER_NODE': '2', 'SLURM_NTASKS': '2'}))\n"
            "print(sorted(m for m in ('torch', 'lightning', 'jsonargparse') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["fit: 1 node(s) x 2 task(s), one per device", "[]"]
    from saq_lightning.commands.slurm_check import light_trainer_settings

    assert light_trainer_settings(["--config", str(config), "--trainer.devices", "4"]) == \
        {"accelerator": "cpu", "devices": 4}
    assert light_trainer_settings(["--config", str(config), "--trainer", "{devices: 1}"]) is None  # full parser
