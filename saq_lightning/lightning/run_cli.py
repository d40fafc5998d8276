"""``SAQLightningCLI`` (LightningCLI with the project's defaults and fit's file safety) and the
one run-config reader, :func:`read_run_config`, that ``generate``, ``ptq`` and ``slurm_check``
(and the tests) parse a run config with, as ``fit`` parses it and with nothing built.
"""

from __future__ import annotations

import importlib
import warnings
from argparse import RawDescriptionHelpFormatter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from saq_lightning.callbacks.mixstep import MixStepCallback
from saq_lightning.data.errors import PhaseError
from saq_lightning.data.mixstep import MixStepSchedule
from saq_lightning.lightning.checkpoint_io import AtomicCheckpointIO
from saq_lightning.lightning.resume import last_candidates, newest_readable
from saq_lightning.lightning.run_lock import folder_locks
from saq_lightning.lightning.run_outputs import SetAside, check_fit_outputs, checkpoint_dirs

PROG = "python -m saq_lightning"


class MixStepPlacementError(PhaseError):
    """A ``MixStepCallback`` in ``trainer.callbacks``: the schedule has one place, ``mixstep:``."""


def schedule_of(callback: MixStepCallback | None) -> MixStepSchedule | None:
    """What the `mixstep:` block links into the module and the data module."""
    return None if callback is None else callback.schedule


def refuse_mixstep_in_callbacks(config: Any) -> None:
    """One line for a config that gives its schedule as a ``MixStepCallback`` in
    ``trainer.callbacks`` (the layout before the top-level ``mixstep:`` block)."""
    entries = (config.get("trainer.callbacks") if config is not None else None) or []
    for entry in entries if isinstance(entries, list) else [entries]:
        path = entry.get("class_path") if isinstance(entry, Namespace) else None
        module, _, name = str(path or "").rpartition(".")
        cls = getattr(importlib.import_module(module), name, None) if module else None
        if isinstance(cls, type) and issubclass(cls, MixStepCallback):
            raise MixStepPlacementError(
                f"trainer.callbacks holds a {name}: give the mixstep schedule once, as the top-level "
                f"`mixstep:` block (its init_args: phases, mode, batches_per_phase, ...; "
                f"see docs/training.md)")


class _HelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """Keeps the line breaks of the epilog (the pipeline-command list) in ``--help``."""


class SAQLightningCLI(LightningCLI):
    """LightningCLI with the project's defaults: subclass mode, config overwrite in reused dirs."""

    def __init__(self, *args, epilog: str | None = None, **kwargs) -> None:
        """``epilog``: text under ``--help`` (the entry point lists the pipeline commands there)."""
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault(
            "parser_kwargs", {"epilog": epilog, "formatter_class": _HelpFormatter,
                              "prog": PROG, "exit_on_error": False}
        )
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        # one file drives generate, ptq and fit: the `ptq:` block is read by `ptq` only
        from saq_lightning.alignment.ptq import PTQSettings

        parser.add_argument("--ptq", type=PTQSettings | None, default=None,
                            help="block reconstruction settings of the `ptq` command (ignored by fit)")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: replace an earlier run's checkpoints in the checkpoint dirpath "
                                 "(kept aside until this run's first checkpoint; otherwise a fresh run "
                                 "there is refused)")
        # the mixstep schedule, given once: a forced callback, linked into the module and the data
        # module when they are built (models without a `mixstep` argument, e.g. pretraining, skip it)
        parser.add_lightning_class_args(MixStepCallback, "mixstep", subclass_mode=True, required=False)
        for target in ("model.init_args.mixstep", "data.init_args.mixstep"):
            parser.link_arguments("mixstep", target, compute_fn=schedule_of, apply_on="instantiate")

    def _run_subcommand(self, subcommand: str) -> None:
        """``fit`` holds its folder locks and its set-aside earlier run for exactly its own length."""
        with ExitStack() as self._fit_scope:
            super()._run_subcommand(subcommand)

    def before_fit(self) -> None:
        """One writer per checkpoint folder; ``--ckpt_path last`` made the newest readable state;
        an earlier run refused, or (``--overwrite``) set aside until the first new checkpoint."""
        config = self.config_init[self.subcommand]
        if self.trainer.is_global_zero:
            self._fit_scope.enter_context(folder_locks(checkpoint_dirs(self.trainer)))
        if config.get("ckpt_path") == "last":
            newest = newest_readable(last_candidates(checkpoint_dirs(self.trainer),
                                                     Path(self.trainer.default_root_dir)))
            if newest is not None:
                config["ckpt_path"] = str(newest)
        aside = check_fit_outputs(self.trainer, config.get("ckpt_path"), bool(config.get("overwrite")))
        if aside is not None:
            self._hold_until_first_checkpoint(aside)

    def _hold_until_first_checkpoint(self, aside: SetAside) -> None:
        io = self.trainer.strategy.checkpoint_io
        if isinstance(io, AtomicCheckpointIO):
            io.after_save = lambda _path: aside.discard()

        def settle(exc_type, exc, tb) -> bool:
            if exc_type is None:
                aside.discard()  # the run finished: the user asked for the old files to go
            else:
                aside.restore()
            return False

        self._fit_scope.push(settle)

    def _parse_ckpt_path(self) -> None:
        """Keep the config: LightningCLI would replace the model's arguments with the hyperparameters
        saved in a ``--ckpt_path <file>`` (and silently train the checkpoint's policy). The module
        compares the two on load instead (``lightning/resume.py``)."""

    def before_instantiate_classes(self) -> None:
        refuse_mixstep_in_callbacks(self.config.get(self.subcommand) if self.subcommand else self.config)
        # SLURM requeue: resume this job's newest checkpoint with no --ckpt_path (docs/slurm.md)
        from saq_lightning.lightning.slurm import apply_resume, resolve_resume_ckpt

        fit = self.config.get("fit") if self.subcommand == "fit" else None
        self.slurm_run = resolve_resume_ckpt(fit) if fit is not None else None
        apply_resume(fit, self.slurm_run)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Any]) -> Any:
        """The forced callbacks (the mixstep schedule's; None without a `mixstep:` block) go first:
        the phase they set is what the other callbacks read at every batch."""
        configured = config.get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        config["callbacks"] = [c for c in callbacks if c is not None] + configured
        return super()._instantiate_trainer(config, [])

    def instantiate_trainer(self, **kwargs):
        from saq_lightning.lightning.slurm import configure_trainer

        trainer = super().instantiate_trainer(**kwargs)
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # atomic beside the target, digest, weights_only
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                # last.ckpt is always the newest state: never a last-v1.ckpt beside a stale last.ckpt
                # (a resume in a moved folder, or from another run's file); the folder's lock and the
                # earlier-run check make this folder the run's own
                callback._enable_version_counter = False
        configure_trainer(trainer, getattr(self, "slurm_run", None))  # requeue on SIGUSR1, quiet batch logs
        return trainer


@contextmanager
def args_given_on_purpose() -> Iterator[None]:
    """LightningCLI's warnings about arguments that are not ``sys.argv`` (commands and tests hand
    it theirs on purpose) and about ``srun`` on the PATH, silenced in this one place."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")
        warnings.filterwarnings("ignore", message=".*`srun` command is available.*")
        yield


class _ParseOnlyCLI(SAQLightningCLI):
    """Parses as ``fit`` does (the CLI's own hooks run: SLURM resume, checks), builds nothing."""

    def instantiate_classes(self) -> None:
        return None

    def _run_subcommand(self, subcommand: str) -> None:
        return None


@dataclass(frozen=True)
class ParsedRun:
    """A run config as ``fit`` reads it, nothing built: ``config`` (``model``, ``data``,
    ``trainer``, ``ptq``, ...) and, for ``subcommand='fit'``, the SLURM resume decision."""

    config: Any
    slurm_run: Any = None


def read_run_config(args: list[str], subcommand: str | None = None) -> ParsedRun:
    """The one run-config reader: ``args`` (``--config FILE`` and overrides) parsed exactly as the
    LightningCLI parses them, with nothing instantiated (``generate``, ``ptq``, ``slurm_check``).
    ``subcommand``: parse as that subcommand (its hooks run; ``fit``: the SLURM resume)."""
    with args_given_on_purpose():
        if subcommand is None:
            return ParsedRun(_ParseOnlyCLI(args=args, run=False).config)
        cli = _ParseOnlyCLI(args=[subcommand, *args])
    return ParsedRun(cli.config[subcommand], getattr(cli, "slurm_run", None))


