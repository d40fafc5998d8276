"""SLURM preemption and requeue that resume by themselves (``fit`` started by ``srun``).

What happens (docs/slurm.md tells it from the user's side):

- **SIGUSR1** (``#SBATCH --signal=SIGUSR1@90`` before the time limit, or ``scancel --signal=USR1``):
  :class:`SlurmRequeue` only sets a flag in the signal handler. At the next step boundary all ranks
  agree (one boolean all-reduce per step), save ``<default_root_dir>/requeue.ckpt``, rank 0 runs
  ``scontrol requeue``, and training stops. Lightning's own handler saves inside the signal
  handler, where one rank can enter the checkpoint barrier while another is still in a gradient
  all-reduce; that hang is why the save waits for the step boundary here.
- **Hard kill or node failure, then a requeue**: nothing could be saved; the periodic ``last.ckpt``
  of the config's ``ModelCheckpoint`` (``save_last``, ``every_n_train_steps``) is the resume point.
- **The requeued start** (``SLURM_RESTART_COUNT`` >= 1): :func:`resolve_resume_ckpt` picks the
  newest (highest ``global_step``) of those checkpoints *written by this same job* and sets
  ``ckpt_path`` to it, so no ``--ckpt_path`` is needed (``--ckpt_path last`` is resolved the same
  way; an explicit path is left alone); it also sets the TensorBoard logger's
  ``version`` to the one the checkpoint was logged under (one run, one loss curve). A config that
  changed between the runs is an error listing every changed field.

Every checkpoint written under SLURM carries :data:`RECORD_KEY`: the job, the run's config and
the loggers' versions. Checkpoints of another job (or none under SLURM) are never picked: a fresh
job with someone's ``last.ckpt`` in its folder is left to the ``--ckpt_path`` rules of ``fit``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from saq_lightning.data.manifest import diff_values, format_mismatches

log = logging.getLogger(__name__)

RECORD_KEY = "saq_slurm_run"
REQUEUE_CKPT = "requeue.ckpt"
BATCH_LOG_REFRESH = 50  # progress-bar refresh (batches) when stdout is not a terminal
IGNORED_FIELDS = ("config", "ckpt_path")  # differ between runs of one job without changing it


class SlurmResumeError(RuntimeError):
    """A requeued job cannot resume as it is (its config changed since the checkpoint)."""


def slurm_job(env: Mapping[str, str] | None = None) -> str | None:
    """This SLURM job (``cluster:job`` or ``cluster:arrayjob_task``, stable across requeues), or
    ``None`` outside a batch job and in interactive jobs (job name ``bash``/``interactive``, which
    Lightning's ``SLURMEnvironment`` leaves alone too)."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    job = env["SLURM_JOB_ID"]
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return f"{env.get('SLURM_CLUSTER_NAME', '')}:{job}"


def requeue_id(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def comparable_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's config as plain JSON values, without what legitimately differs between starts."""
    plain = json.loads(json.dumps(config, default=str))
    for key in IGNORED_FIELDS:
        plain.pop(key, None)
    loggers = plain.get("trainer", {}).get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict):
            logger["init_args"].pop("version", None)  # set by the resume itself
    return plain


@dataclass(frozen=True)
class ResumePoint:
    path: Path
    global_step: int
    logger_versions: list[Any]


@dataclass(frozen=True)
class SlurmRun:
    """What a ``fit`` under SLURM needs from the CLI: its job, its config, where it resumes."""

    job: str
    config: dict[str, Any]
    resume: ResumePoint | None


def _checkpoint_dirs(config: Mapping[str, Any]) -> list[Path]:
    trainer = config.get("trainer") or {}
    dirs = [Path(trainer.get("default_root_dir") or os.getcwd())]
    callbacks = trainer.get("callbacks") or []
    for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
        if isinstance(cb, dict) and str(cb.get("class_path", "")).endswith("ModelCheckpoint"):
            dirpath = (cb.get("init_args") or {}).get("dirpath")
            if dirpath:
                dirs.append(Path(dirpath))
    return dirs


def resume_candidates(config: Mapping[str, Any]) -> list[Path]:
    """``requeue.ckpt`` in ``default_root_dir`` and ``last*.ckpt`` in each ModelCheckpoint dirpath."""
    dirs = _checkpoint_dirs(config)
    found = [dirs[0] / REQUEUE_CKPT]
    for d in dirs[1:]:
        found += sorted(d.glob("last*.ckpt")) if d.is_dir() else []
    return [p for p in found if p.is_file()]


def _read_record(path: Path) -> tuple[int, dict[str, Any]] | None:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # noqa: BLE001 - a save cut short by a kill is simply not a resume point
        log.warning("skipping unreadable checkpoint %s (%s)", path, err)
        return None
    record = ckpt.get(RECORD_KEY)
    return (int(ckpt.get("global_step", 0)), record) if isinstance(record, dict) else None


def newest_checkpoint_of_job(paths: Iterable[Path], job: str) -> tuple[ResumePoint, dict] | None:
    """The checkpoint of ``job`` with the highest global step; on a tie ``requeue.ckpt`` (the save
    made at the signal's step boundary for exactly this resume: a ``last.ckpt`` that Lightning writes
    at the same step while the stopped run winds down may record its loops as at an epoch end),
    then the newer file."""
    best = None
    for path in paths:
        read = _read_record(path)
        if read is None or read[1].get("job") != job:
            continue
        key = (read[0], path.name == REQUEUE_CKPT, path.stat().st_mtime)
        if best is None or key > best[0]:
            best = (key, ResumePoint(path, read[0], list(read[1].get("logger_versions") or [])), read[1])
    return None if best is None else (best[1], best[2])


def resolve_resume_ckpt(config: Any, env: Mapping[str, str] | None = None) -> SlurmRun | None:
    """The SLURM side of ``fit``: ``None`` outside a SLURM batch job, else the job, its comparable
    config and, in a requeued start with no ``ckpt_path`` given, the checkpoint to resume.

    ``config`` is the parsed ``fit`` config (a jsonargparse Namespace or its dict). Raises
    :class:`SlurmResumeError` (field by field) when that checkpoint was written under another config.
    The CLI calls this before anything is built, so a ``ckpt_path`` set here is in place before any
    check of ``fit`` on existing checkpoints runs.
    """
    env = os.environ if env is None else env
    job = slurm_job(env)
    if job is None:
        return None
    if hasattr(config, "as_dict"):  # a parsed jsonargparse Namespace
        config = config.as_dict()
    current = comparable_config(config)
    given = config.get("ckpt_path")  # "last" (the configs' resume advice) is resolved here, requeue.ckpt included
    if given not in (None, "last") or int(env.get("SLURM_RESTART_COUNT", "0")) < 1:
        return SlurmRun(job, current, None)
    found = newest_checkpoint_of_job(resume_candidates(config), job)
    if found is None:
        return SlurmRun(job, current, None)
    point, record = found
    mismatches = diff_values(record.get("config") or {}, current, "", subset=False)
    if mismatches:
        raise SlurmResumeError(format_mismatches(
            f"requeued SLURM job {job}: the config changed since {point.path} (step {point.global_step}) was "
            "written; restore it, or submit a new job with another default_root_dir (or --ckpt_path)",
            mismatches))
    return SlurmRun(job, current, point)


def apply_resume(namespace: Any, run: SlurmRun | None) -> None:
    """Set ``ckpt_path`` and the loggers' ``version`` of a parsed ``fit`` namespace in place."""
    if run is None or run.resume is None:
        return
    namespace["ckpt_path"] = str(run.resume.path)
    loggers = namespace.get("trainer.logger")
    many = loggers if isinstance(loggers, list) else [loggers]
    for logger, version in zip(many, run.resume.logger_versions):
        init = getattr(logger, "init_args", None)
        if init is not None and "version" in init and init["version"] is None and version is not None:
            init["version"] = version
    log.info("SLURM requeue: resuming %s at step %d", run.resume.path, run.resume.global_step)


class SlurmRequeue(pl.Callback):
    """SIGUSR1 -> at the next step boundary: save ``requeue.ckpt`` and stop; at the end of
    training, flush the loggers and ``scontrol requeue``.

    The requeue waits for the end of training because Lightning logs a step's metrics only after
    ``on_train_batch_end``, and the requeue ends this job: requeued at the step boundary, the job
    could be gone before the saved step's scalars reached the TensorBoard file (the resumed run
    starts at the next step, so that point would be missing from the curve for good).

    Also writes :data:`RECORD_KEY` into every checkpoint (periodic ``last.ckpt`` included).
    """

    def __init__(self, run: SlurmRun, signum: signal.Signals = signal.SIGUSR1) -> None:
        self.run = run
        self.signum = signum
        self.requested = False
        self.saved: Path | None = None  # requeue.ckpt, once written: the requeue follows at the end
        self._previous: Any = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True  # nothing else in a signal handler: the step boundary does the work

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(self.signum, self._on_signal)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.saved is not None or not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        self.saved = Path(trainer.default_root_dir) / REQUEUE_CKPT
        trainer.save_checkpoint(self.saved)  # every rank, at the same step: no collective is left waiting
        trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.saved is None:
            return
        for logger in trainer.loggers:
            logger.save()  # TensorBoard: flush the event file
        if not trainer.is_global_zero:
            return
        job = requeue_id()
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            print(f"SLURM: signal {int(self.signum)} at step {trainer.global_step}: saved {self.saved}, requeued "
                  f"job {job}", flush=True)
        else:
            print(f"SLURM: saved {self.saved} at step {trainer.global_step}, but `scontrol requeue {job}` failed: "
                  f"{done.stderr.strip()} (submit the job again to resume)", file=sys.stderr, flush=True)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint[RECORD_KEY] = {"job": self.run.job, "config": self.run.config,
                                  "logger_versions": [lg.version for lg in trainer.loggers]}


def batch_log_progress(trainer: pl.Trainer, stream: Any = None) -> None:
    """When stdout is not a terminal (a batch log), a progress bar refreshing more often than every
    :data:`BATCH_LOG_REFRESH` batches (TQDM's default is every batch: one log line each) refreshes
    every :data:`BATCH_LOG_REFRESH`; Rich's default bar (100, and no live output off a terminal) and a
    disabled bar (0) are left as they are."""
    stream = sys.stdout if stream is None else stream
    bar = trainer.progress_bar_callback
    if bar is None or (hasattr(stream, "isatty") and stream.isatty()):
        return
    rate = getattr(bar, "_refresh_rate", None)  # both Lightning bars keep it there (read-only property)
    if isinstance(rate, int) and 0 < rate < BATCH_LOG_REFRESH:
        bar._refresh_rate = BATCH_LOG_REFRESH


def configure_trainer(trainer: pl.Trainer, run: SlurmRun | None) -> None:
    """The trainer-side hook of the CLI: requeue handling under SLURM, quiet bars in batch logs."""
    if run is not None:
        trainer.callbacks.append(SlurmRequeue(run))
    batch_log_progress(trainer)
