"""Command line: LightningCLI's ``fit/validate/test/predict`` plus the pipeline subcommands.

Adding a pipeline subcommand is one entry in ``PIPELINE_COMMANDS`` pointing at a function
``main(args: list[str]) -> None`` (usually ``jsonargparse.auto_cli`` over a typed function, which
gives ``--config`` and ``--print_config`` for free).
"""

from __future__ import annotations

import importlib
import os
import sys
from argparse import RawDescriptionHelpFormatter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from saq_lightning.lightning.checkpoint_io import AtomicCheckpointIO
from saq_lightning.lightning.resume import last_candidates, newest_readable
from saq_lightning.lightning.run_lock import folder_locks
from saq_lightning.lightning.run_outputs import SetAside, check_fit_outputs, checkpoint_dirs
from saq_lightning.quiet import silence_known_harmless
from saq_lightning.user_errors import split_traceback_flag, user_errors

PROG = "python -m saq_lightning"


@dataclass(frozen=True)
class PipelineCommand:
    target: str  # "module:function", imported only when the command runs
    help: str

    def load(self) -> Callable[[list[str]], None]:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


PIPELINE_COMMANDS: dict[str, PipelineCommand] = {
    "demo": PipelineCommand(
        "saq_lightning.commands.demo:main",
        "run the embedded digits default end to end and print its quality figures",
    ),
    "generate": PipelineCommand(
        "saq_lightning.commands.generate:main",
        "teacher trajectories of the mixstep phases -> WebDataset shards + manifest (fit config)",
    ),
    "sample": PipelineCommand(
        "saq_lightning.commands.sample:main",
        "N samples (FP or quantized student) -> ADM .npz + PNG grid; resumable, multi-rank",
    ),
    "evaluate": PipelineCommand(
        "saq_lightning.commands.evaluate:main",
        "FID/sFID/IS/KID/precision-recall/CLIP score (digits: FD, accuracy) of a sample .npz",
    ),
    "ptq": PipelineCommand(
        "saq_lightning.commands.ptq:main",
        "SA-PTQ / BRECQ block reconstruction (AdaRound) from calibration shards; multi-rank, resumable",
    ),
    "export": PipelineCommand(
        "saq_lightning.commands.export:main",
        "student checkpoint (fit/ptq) or naive:<policy> -> integer export folder (sample --runtime int)",
    ),
    "diagnose": PipelineCommand(
        "saq_lightning.commands.diagnose:main",
        "trajectory diagnostics: student vs FP distance per step at orders 1-3, flow straightness",
    ),
}


def _pipeline_epilog() -> str:
    width = max(len(n) for n in PIPELINE_COMMANDS)
    lines = [f"  {name:<{width}}  {cmd.help}" for name, cmd in PIPELINE_COMMANDS.items()]
    return (
        "pipeline subcommands (python -m saq_lightning <name> --help):\n" + "\n".join(lines)
    )


class _HelpFormatter(RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """Keeps the line breaks of the pipeline-command list in ``--help``."""


class SAQLightningCLI(LightningCLI):
    """LightningCLI with the project's defaults: subclass mode, config overwrite in reused dirs."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault(
            "parser_kwargs", {"epilog": _pipeline_epilog(), "formatter_class": _HelpFormatter,
                              "prog": PROG, "exit_on_error": False}
        )
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        # one file drives generate, ptq and fit: the `ptq:` block is read by `ptq` only
        from saq_lightning.lightning.ptq import PTQSettings

        parser.add_argument("--ptq", type=PTQSettings | None, default=None,
                            help="block reconstruction settings of the `ptq` command (ignored by fit)")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="fit: replace an earlier run's checkpoints in the checkpoint dirpath "
                                 "(kept aside until this run's first checkpoint; otherwise a fresh run "
                                 "there is refused)")

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
        # SLURM requeue: resume this job's newest checkpoint with no --ckpt_path (docs/slurm.md)
        from saq_lightning.lightning.slurm import apply_resume, resolve_resume_ckpt

        fit = self.config.get("fit") if self.subcommand == "fit" else None
        self.slurm_run = resolve_resume_ckpt(fit) if fit is not None else None
        apply_resume(fit, self.slurm_run)

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


def _offline() -> None:
    """No network at run time: every weight comes from a local path."""
    for var in ("HF_HUB_OFFLINE", "DIFFUSERS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")


def main(args: list[str] | None = None) -> None:
    _offline()
    silence_known_harmless()
    argv, show_traceback = split_traceback_flag(list(sys.argv[1:] if args is None else args))
    if not argv:
        argv = ["--help"]  # the bare command lists every subcommand
    if args is None:  # LightningCLI reads sys.argv; usage lines say how the command was called
        # (LightningCLI's prog is PROG; argparse names a pipeline command's usage after argv[0];
        # Lightning's srun hint reads "srun python" + argv)
        sys.argv[:] = [f"{PROG} {argv[0]}" if argv[0] in PIPELINE_COMMANDS else "-m saq_lightning", *argv]
    with user_errors(argv, show_traceback):
        if argv[0] in PIPELINE_COMMANDS:
            PIPELINE_COMMANDS[argv[0]].load()(argv[1:])
            return
        SAQLightningCLI(args=None if args is None else argv)


if __name__ == "__main__":
    main()
