"""Signals that SLURM sends before a run can act on them: they are recorded, not fatal.

A ``fit`` task spends tens of seconds to minutes importing torch and Lightning, parsing its config,
loading the teacher and meeting the other ranks before :class:`~saq_lightning.lightning.slurm.SlurmRequeue`
installs its handlers. A SIGUSR1 in that window (``--signal=SIGUSR1@90`` on a job started close to
its limit, a preemption that sends the user signal) would kill the task by the signal's default
action: the job ends FAILED and nothing is saved. ``python -m saq_lightning`` therefore calls
:func:`record_early_signals` before its heavy imports; the handlers that take over later collect
what arrived in between with :func:`take_early_signal` and act on it at their first opportunity
(the first step boundary of ``fit``; at once for ``generate``/``ptq``/``sample``).

The record is process-wide (a signal is delivered to the process, before any object that could own
it exists); it is written by the handler and emptied by :func:`take_early_signal` only. This module
imports nothing heavy (no torch, no Lightning).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping, Sequence
from types import FrameType

#: which signals each command can act on once it runs (the others keep their default actions)
HANDLED_BY_COMMAND: dict[str, tuple[signal.Signals, ...]] = {
    "fit": (signal.SIGUSR1, signal.SIGTERM),  # saved at the first step boundary, then requeue or exit
    "generate": (signal.SIGUSR1,),  # requeue at once (commands/placement.py)
    "ptq": (signal.SIGUSR1,),
    "sample": (signal.SIGUSR1,),
}


class EarlySignals:
    """The signals received since :meth:`install`, oldest first."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.installed: set[int] = set()

    def _record(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)  # nothing else in a signal handler

    def install(self, signals: Sequence[signal.Signals]) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in signals:
            signal.signal(sig, self._record)
            self.installed.add(int(sig))

    def take(self, signals: Sequence[signal.Signals]) -> int | None:
        """The last of ``signals`` received so far (``None``: none), forgetting all of them."""
        wanted = {int(s) for s in signals}
        mine = [s for s in self.received if s in wanted]
        self.received = [s for s in self.received if s not in wanted]
        return mine[-1] if mine else None


EARLY = EarlySignals()


def in_slurm_step(env: Mapping[str, str] | None = None) -> bool:
    """A task of a SLURM job (batch or srun step), not an interactive allocation's shell."""
    env = os.environ if env is None else env
    return "SLURM_JOB_ID" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")


def record_early_signals(argv: Sequence[str], env: Mapping[str, str] | None = None) -> tuple[signal.Signals, ...]:
    """Record (instead of dying of) the signals that ``argv``'s command handles later, under SLURM
    only. Returns the signals now recorded."""
    command = next((a for a in argv if not a.startswith("-")), None)  # `--traceback` may come first
    if command is None or not in_slurm_step(env):
        return ()
    signals = HANDLED_BY_COMMAND.get(command, ())
    EARLY.install(signals)
    return signals


def take_early_signal(signals: Sequence[signal.Signals]) -> int | None:
    """The last of ``signals`` that arrived before its real handler was installed (``None``: none)."""
    return EARLY.take(signals)
