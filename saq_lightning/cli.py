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
from dataclasses import dataclass

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningCLI


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
    "diagnose": PipelineCommand(
        "saq_lightning.commands.diagnose:main",
        "trajectory diagnostics: student vs FP distance per step at orders 1-3, flow straightness",
    ),
}

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


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
            "parser_kwargs", {"epilog": _pipeline_epilog(), "formatter_class": _HelpFormatter}
        )
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        # SLURM requeue: resume this job's newest checkpoint with no --ckpt_path (docs/slurm.md)
        from saq_lightning.lightning.slurm import apply_resume, resolve_resume_ckpt

        fit = self.config.get("fit") if self.subcommand == "fit" else None
        self.slurm_run = resolve_resume_ckpt(fit) if fit is not None else None
        apply_resume(fit, self.slurm_run)

    def instantiate_trainer(self, **kwargs):
        from saq_lightning.lightning.slurm import configure_trainer

        trainer = super().instantiate_trainer(**kwargs)
        configure_trainer(trainer, getattr(self, "slurm_run", None))  # requeue on SIGUSR1, quiet batch logs
        return trainer


def _offline() -> None:
    """No network at run time: every weight comes from a local path."""
    for var in ("HF_HUB_OFFLINE", "DIFFUSERS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(var, "1")


def main(args: list[str] | None = None) -> None:
    _offline()
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in PIPELINE_COMMANDS:
        PIPELINE_COMMANDS[argv[0]].load()(argv[1:])
        return
    SAQLightningCLI(args=args)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
