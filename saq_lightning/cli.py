"""Command line: LightningCLI's ``fit/validate/test/predict`` plus the pipeline subcommands.

Adding a pipeline subcommand is one entry in ``PIPELINE_COMMANDS`` pointing at a function
``main(args: list[str]) -> None`` (usually ``jsonargparse.auto_cli`` over a typed function, which
gives ``--config`` and ``--print_config`` for free).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from saq_lightning.lightning.run_cli import PROG, SAQLightningCLI
from saq_lightning.quiet import silence_known_harmless
from saq_lightning.user_errors import split_traceback_flag, user_errors


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
        SAQLightningCLI(args=None if args is None else argv, epilog=_pipeline_epilog())


if __name__ == "__main__":
    main()
