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
import re
import shlex
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

from saq_lightning.callbacks.step_progress import ProgressLines
from saq_lightning.data.errors import ResumeMismatchError
from saq_lightning.distributed import requeue_id
from saq_lightning.lightning.early_signals import take_early_signal
from saq_lightning.lightning.resume import REQUEUE_CKPT, last_candidates
from saq_lightning.mismatches import diff_values, format_mismatches

log = logging.getLogger(__name__)

RECORD_KEY = "saq_slurm_run"
BATCH_LOG_REFRESH = 50  # progress-bar refresh (batches) when stdout is not a terminal
PROGRESS_LINE_S = 30.0  # seconds between two plain progress lines in a batch log
IGNORED_FIELDS = ("config", "ckpt_path")  # differ between runs of one job without changing it


class SlurmResumeError(ResumeMismatchError):
    """A requeued job cannot resume as it is (its config changed since the checkpoint): a user error,
    one message and exit status 2 before any process group or model is built."""


def slurm_job(env: Mapping[str, str] | None = None) -> str | None:
    """This SLURM job (``cluster:job`` or ``cluster:arrayjob_task``, stable across requeues), or
    ``None`` outside a batch job and in interactive jobs (job name ``bash``/``interactive``, which
    Lightning's ``SLURMEnvironment`` leaves alone too)."""
    env = os.environ if env is None else env
    if "SLURM_JOB_ID" not in env or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return None
    return f"{env.get('SLURM_CLUSTER_NAME', '')}:{requeue_id(env)}"


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
    return last_candidates(dirs[1:], dirs[0])  # the files `--ckpt_path last` chooses from


def _read_record(path: Path) -> tuple[int, dict[str, Any]] | None:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - a save cut short by a kill is simply not a resume point
        log.warning("skipping unreadable checkpoint %s (%s)", path, err)
        return None
    record = ckpt.get(RECORD_KEY)
    return (int(ckpt.get("global_step", 0)), record) if isinstance(record, dict) else None


def newest_checkpoint(paths: Iterable[Path], keep: Any) -> tuple[ResumePoint, dict] | None:
    """The checkpoint whose record ``keep(record)`` accepts with the highest global step; on a tie
    ``requeue.ckpt`` (the save made at the signal's step boundary for exactly this resume: a
    ``last.ckpt`` that Lightning writes at the same step while the stopped run winds down may record
    its loops as at an epoch end), then the newer file."""
    best = None
    for path in paths:
        read = _read_record(path)
        if read is None or not keep(read[1]):
            continue
        key = (read[0], path.name == REQUEUE_CKPT, path.stat().st_mtime)
        if best is None or key > best[0]:
            best = (key, ResumePoint(path, read[0], list(read[1].get("logger_versions") or [])), read[1])
    return None if best is None else (best[1], best[2])


def newest_checkpoint_of_job(paths: Iterable[Path], job: str) -> tuple[ResumePoint, dict] | None:
    """The newest checkpoint written by ``job`` (:func:`newest_checkpoint`)."""
    return newest_checkpoint(paths, lambda record: record.get("job") == job)


def resolve_resume_ckpt(config: Any, env: Mapping[str, str] | None = None) -> SlurmRun | None:
    """The SLURM side of ``fit``: ``None`` outside a SLURM batch job, else the job, its comparable
    config and the checkpoint to resume with the TensorBoard version to continue:

    - a requeued start (``SLURM_RESTART_COUNT`` >= 1) with no ``ckpt_path`` or ``last``: the newest
      checkpoint of this job; :class:`SlurmResumeError` (field by field) when it was written under
      another config;
    - a new job with ``--ckpt_path last`` (a resubmission after ``scancel`` or a failed requeue): the
      newest of ``requeue.ckpt`` and ``last*.ckpt`` written under this same config, by any job;
    - a new job with an explicit ``--ckpt_path`` written under this same config: that file, and
      its TensorBoard version (one run, one curve, across resubmissions).

    ``config`` is the parsed ``fit`` config (a jsonargparse Namespace or its dict). The CLI calls
    this before anything is built, so a ``ckpt_path`` set here is in place before any check of
    ``fit`` on existing checkpoints runs.
    """
    env = os.environ if env is None else env
    job = slurm_job(env)
    if job is None:
        return None
    if hasattr(config, "as_dict"):  # a parsed jsonargparse Namespace
        config = config.as_dict()
    current = comparable_config(config)
    given = config.get("ckpt_path")
    requeued = int(env.get("SLURM_RESTART_COUNT", "0")) >= 1

    def same_run(record: dict) -> bool:
        return not diff_values(record.get("config") or {}, current, "", subset=False)

    if given not in (None, "last"):  # an explicit file: continue its TensorBoard run when it is this run
        found = newest_checkpoint([Path(given)] if Path(given).is_file() else [], same_run)
        return SlurmRun(job, current, found[0] if found else None)
    if not requeued:
        found = newest_checkpoint(resume_candidates(config), same_run) if given == "last" else None
        return SlurmRun(job, current, found[0] if found else None)
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
    if os.environ.get("SLURM_PROCID", "0") == "0":  # one line per job, not per task
        print(f"SLURM: fit resumes {run.resume.path} (step {run.resume.global_step}), TensorBoard version(s) "
              f"{run.resume.logger_versions}", flush=True)


STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def _scontrol(*args: str) -> subprocess.CompletedProcess | str:
    """``scontrol <args>``, or why it could not run."""
    try:
        return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        return "scontrol is not installed on this node"
    except subprocess.TimeoutExpired:
        return "scontrol did not answer within 120 s"


def requeue_job(env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """``scontrol requeue <job>`` when the job still runs: whether it was requeued, and why not.

    A SIGTERM also comes from ``scancel`` (the job is CANCELLED by then) and from an admin's requeue
    (already REQUEUED): Slurm 22.05 accepts a requeue of a cancelled job that is still completing,
    which would undo the user's ``scancel``, so only a RUNNING job (a preemption in its grace time,
    the time-limit signal) is requeued."""
    job = requeue_id(env)
    shown = _scontrol("show", "job", "-o", job)
    if isinstance(shown, str):
        return False, shown
    state = re.search(r"JobState=(\S+)", shown.stdout)
    if state is None or state.group(1) != "RUNNING":
        return False, f"the job is {state.group(1) if state else 'unknown to scontrol'}, not running"
    done = _scontrol("requeue", job)
    if isinstance(done, str):
        return False, done
    return done.returncode == 0, (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"


def resume_command(argv: list[str], ckpt: Path) -> str:
    """The ``sbatch slurm/fit.sbatch ...`` line that resumes ``ckpt``: this task's ``fit`` arguments
    with ``--ckpt_path`` replaced (the batch script takes the config first)."""
    args = list(argv[1:] if argv and argv[0] == "fit" else argv)
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True
        elif not arg.startswith("--ckpt_path="):
            kept.append(arg)
    if len(kept) >= 2 and kept[0] == "--config":
        kept = kept[1:]
    elif kept and kept[0].startswith("--config="):
        kept[0] = kept[0].split("=", 1)[1]
    return "sbatch [options] " + shlex.join(["slurm/fit.sbatch", *kept, "--ckpt_path", str(ckpt)])


class SlurmRequeue(pl.Callback):
    """SIGUSR1 or SIGTERM under SLURM -> at the next step boundary every rank saves
    ``requeue.ckpt``; once that step's scalars are logged (the next hook of any kind: the next
    batch's start, a validation's start, the epoch's or training's end) rank 0 runs
    ``scontrol requeue`` and every rank exits with ``128 + signal``.

    - The requeue comes *before* any other end-of-run work: this callback is the first one
      (``configure_trainer``), it acts before a validation that the stop would trigger, and the
      evaluation callbacks skip their hooks while :attr:`stopping_for_restart` is true. Lightning
      logs a step's metrics only after ``on_train_batch_end``, hence not at the save itself: the
      requeue ends the job, and the resumed run starts after the saved step.
    - SIGTERM is what Slurm sends on a preemption without the user signal, ``scancel`` and an
      admin's requeue. Lightning's SLURM handling turns it into ``SIGTERMException``, a
      ``SystemExit(0)``: the job would end COMPLETED at a partial student. Here it is saved and
      requeued when the job can still be requeued (a preemption in its grace time); otherwise
      (``scancel``, ``--no-requeue``, no ``scontrol``) the run exits non-zero with one line naming
      ``requeue.ckpt`` and the command that resumes it. A run that stopped never exits 0.
    - The ranks wait for rank 0's ``scontrol`` (one broadcast) before exiting: ``srun
      --kill-on-bad-exit`` would otherwise end rank 0 in the middle of it. A requeued task leaves
      with ``os._exit`` (Slurm is killing it; a Lightning teardown ran into ``KillWait``); one that
      was not requeued raises ``SystemExit``.

    Also writes :data:`RECORD_KEY` into every checkpoint (periodic ``last.ckpt`` included).
    """

    def __init__(self, run: SlurmRun, signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> None:
        self.run = run
        self.signals = signals
        self.received = 0  # the signal number, 0 while none arrived
        self.saved: Path | None = None  # requeue.ckpt, once written: the requeue follows at the next hook
        self.signum: signal.Signals | None = None
        self.saved_step = -1
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def stopping_for_restart(self) -> bool:
        """The run saved ``requeue.ckpt`` and ends at the next hook (callbacks/graceful_stop.py)."""
        return self.saved is not None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = self.received or signum  # nothing else in a signal handler: the step boundary does the work

    def _install(self, sig: signal.Signals) -> None:
        if sig in self.signals and threading.current_thread() is threading.main_thread():
            self._previous.setdefault(sig, signal.signal(sig, self._on_signal))
            self.received = self.received or (take_early_signal([sig]) or 0)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._install(signal.SIGUSR1)  # before Lightning's own SLURM handler, which then stays out

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning installs its SIGTERM handler after `setup`; a SIGTERM it already caught would end
        # the run with SIGTERMException (exit 0) at the next step: it is taken over here
        self._install(signal.SIGTERM)
        connector = getattr(trainer, "_signal_connector", None)
        if signal.SIGTERM in self.signals and getattr(connector, "received_sigterm", False):
            connector.received_sigterm = False
            self.received = self.received or int(signal.SIGTERM)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
        self._previous = {}

    def _agreed_signal(self, trainer: pl.Trainer) -> int:
        """The signal any rank received (0: none): every rank stops at the same step."""
        if trainer.world_size > 1:
            flag = torch.tensor([self.received], device=trainer.strategy.root_device)
            return int(trainer.strategy.reduce(flag, reduce_op="max").item())
        return self.received

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.saved is not None:
            return
        signum = self._agreed_signal(trainer)
        if not signum:
            return
        self.signum = signal.Signals(signum)
        self.saved = Path(trainer.default_root_dir).resolve() / REQUEUE_CKPT
        trainer.save_checkpoint(self.saved)  # every rank, at the same step: no collective is left waiting
        self.saved_step = trainer.global_step

    # the first hook after the saved step's scalars were logged ends the run
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._requeue_and_exit(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._requeue_and_exit(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._requeue_and_exit(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._requeue_and_exit(trainer)

    def _requeue_and_exit(self, trainer: pl.Trainer) -> None:
        if self.saved is None or self.signum is None:
            return
        for logger in trainer.loggers:
            logger.save()  # TensorBoard: flush the event file before the job may end
        requeued, why = requeue_job() if trainer.is_global_zero else (False, "")
        requeued = bool(trainer.strategy.broadcast(requeued, src=0))  # every rank waits for scontrol
        code = 128 + int(self.signum)
        if trainer.is_global_zero:
            job = requeue_id()
            if requeued:
                print(f"SLURM: signal {int(self.signum)} at step {self.saved_step}: saved {self.saved}, requeued "
                      f"job {job}", flush=True)
            else:
                print(f"SLURM: signal {int(self.signum)} ({self.signum.name}) at step {self.saved_step}: saved "
                      f"{self.saved}, but job {job} was not requeued by this run (`scontrol requeue {job}`: {why}); exiting "
                      f"with {code}. Resume with: {resume_command(sys.argv[1:], self.saved)}",
                      file=sys.stderr, flush=True)
        if requeued:
            # Slurm is ending this task now (SIGTERM, SIGKILL after KillWait): everything is saved and
            # flushed, so leave at once rather than in a teardown that KillWait would cut short
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        raise SystemExit(code)

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


def configure_trainer(trainer: pl.Trainer, run: SlurmRun | None, stream: Any = None) -> None:
    """The trainer-side hook of the CLI: requeue handling under SLURM; in batch logs (stdout not a
    terminal) quiet bars and one plain progress line every :data:`PROGRESS_LINE_S` seconds."""
    if run is not None:
        # first: its requeue comes before any other callback's end-of-run work
        trainer.callbacks.insert(0, SlurmRequeue(run))
    stream = sys.stdout if stream is None else stream
    batch_log_progress(trainer, stream)
    if not (hasattr(stream, "isatty") and stream.isatty()):
        trainer.callbacks.append(ProgressLines(PROGRESS_LINE_S))
