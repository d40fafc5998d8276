"""SIGTERM and SIGINT end a training run with a resumable ``last.ckpt`` and a non-zero exit code.

Lightning alone loses work on both: SIGTERM stops at the next batch with ``SIGTERMException``, a
``SystemExit`` whose code is 0 (a scheduler records success) and saves nothing; SIGINT
(Ctrl-C) raises ``KeyboardInterrupt`` inside the step and exits 1, saving nothing.

:class:`GracefulStop` (added by ``SAQLightningModule.configure_callbacks``) replaces both handlers
while training runs. A signal only sets a flag; at the end of the running step (where
``ModelCheckpoint`` saves too, so the checkpoint is the one a periodic save would have written)
the run saves ``last.ckpt`` in the checkpoint folder and exits with ``128 + signal``: 143 for
SIGTERM, 130 for SIGINT. Resuming it with ``--ckpt_path last`` continues exactly. A second signal
of the same kind while the step finishes kills the process at once (default action).

Under DDP every rank learns of a signal any rank received at the same step boundary (one
all-reduce of a flag per step), so all ranks save together and stop together.

Under SLURM (Lightning's ``SLURMEnvironment`` is active, i.e. the run was started with ``srun``)
SIGTERM and SIGUSR1 belong to the SLURM requeue (``lightning/slurm.py``: ``SlurmRequeue``, which
the CLI adds to every ``fit`` in a SLURM job; it saves ``requeue.ckpt``, requeues when the job
still runs and otherwise exits 143/138): this callback then installs only its SIGINT handler.
SIGUSR1 is never handled here. :func:`stopping_for_restart` tells other callbacks that such a stop
is under way.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

#: exit status of a run stopped by a signal: the shell's convention, 128 + signal number
EXIT_CODES = {signal.SIGTERM: 128 + signal.SIGTERM, signal.SIGINT: 128 + signal.SIGINT}


class GracefulStop(pl.Callback):
    """Save ``last.ckpt`` at the next step boundary after SIGTERM/SIGINT, then exit non-zero."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    # ------------------------------------------------------------------ handlers
    def signals(self, trainer: pl.Trainer) -> tuple[signal.Signals, ...]:
        """The signals handled in this run: SIGINT always, SIGTERM unless under SLURM."""
        slurm = isinstance(trainer._accelerator_connector.cluster_environment, SLURMEnvironment)
        return (signal.SIGINT,) if slurm else (signal.SIGTERM, signal.SIGINT)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if self.received == sig:  # asked twice: stop now
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            return
        self.received = sig
        log.warning("received %s: saving last.ckpt at the end of this step, then exiting with %d "
                    "(send it again to stop at once)", sig.name, EXIT_CODES[sig])

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set in the main thread
        for sig in self.signals(trainer):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        self._restore()

    # ------------------------------------------------------------------ the stop
    def _stop_requested(self, trainer: pl.Trainer) -> int:
        """The signal to stop for (0: none), agreed by every rank."""
        mine = int(self.received or 0)
        if trainer.world_size > 1:
            import torch

            flag = torch.tensor([mine], device=trainer.strategy.root_device)
            return int(trainer.strategy.reduce(flag, reduce_op="max").item())
        return mine

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs,
                           batch, batch_idx: int) -> None:
        signum = self._stop_requested(trainer)
        if not signum:
            return
        path = last_checkpoint_path(trainer)
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last:
                # the resumed run's ModelCheckpoint then takes this file for its own last.ckpt
                # (else it would write last-v1.ckpt next to it)
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path, weights_only=False)  # resumable: optimizer, loops, callbacks
        sig = signal.Signals(signum)
        log.warning("saved %s at step %d after %s; resume with --ckpt_path last", path,
                    trainer.global_step, sig.name)
        raise SystemExit(EXIT_CODES.get(sig, 128 + signum))


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    """Where ``--ckpt_path last`` looks: ``last.ckpt`` in the first ModelCheckpoint's folder
    (``<default_root_dir>/checkpoints`` without one)."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    return Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"


def stopping_for_restart(trainer: pl.Trainer) -> bool:
    """Whether the run saved its resume point and is about to end for a restart (a SLURM requeue:
    ``lightning/slurm.py``'s ``SlurmRequeue``). Evaluation callbacks skip their hooks then: their work
    would delay the requeue, and their scalars at the stop step are not those of an uninterrupted run."""
    return any(getattr(callback, "stopping_for_restart", False) is True for callback in trainer.callbacks)
