"""``python -m saq_lightning ptq --config <ptq config>``: SA-PTQ / BRECQ block reconstruction.

The config is a training config (the same teacher, policy, guidance, solver family and
``data.shards`` as ``generate``/``fit``) plus a ``ptq:`` block (``saq_lightning.alignment.ptq.
PTQSettings``). Any LightningCLI-style override works (``--ptq.iters 2000``).

Ranks: under ``torchrun`` (``RANK``/``WORLD_SIZE``) or ``srun`` (``SLURM_PROCID``/``SLURM_NTASKS``)
every rank reconstructs every block on its share of the calibration samples, gradients summed
over ranks (gloo on CPU, NCCL on CUDA; the ranks meet where ``fit``'s would, by Lightning's rule:
``saq_lightning/distributed.py``). Rerunning the same command resumes:
finished blocks are loaded, the first unfinished one is redone.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

import torch

from saq_lightning.devices import choose_device
from saq_lightning.distributed import Placement, environment_placement, init_process_group

from .generate import _bool
from .placement import requeue_on_sigusr1

if TYPE_CHECKING:  # pragma: no cover
    from saq_lightning.alignment.ptq import PTQSettings
    from saq_lightning.commands.run_config import RunParts

HELP = """usage: python -m saq_lightning ptq --config CONFIG [overrides] [options]

Post-training quantization by block reconstruction (BRECQ + AdaRound; SA-PTQ's mixed-order pairs)
of the config's student, from the calibration shards in data.shards (written by `generate`).
Writes ptq.output/student.ckpt (+ ptq_results.json, tb/, ptq_state/); resumable.

options:
  --config CONFIG        the PTQ config (a training config with a `ptq:` block); repeatable
  --accelerator {auto,cpu,cuda}
                         where the models run (default auto: cuda if available)
  --progress {true,false}
                         progress bar per block on rank 0 (default true)
  --max_blocks N         stop after N newly reconstructed blocks (rerun to continue)
  --overwrite {true,false}
                         replace a student.ckpt of other settings in ptq.output (default false: refused)
Any other argument is an override of the config (e.g. --ptq.iters 2000 --ptq.objective same_input).
"""


def parse_options(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m saq_lightning ptq", add_help=False)
    parser.add_argument("--accelerator", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--progress", type=_bool, default=True)
    parser.add_argument("--max_blocks", type=int, default=None)
    parser.add_argument("--overwrite", type=_bool, default=False)
    opts, rest = parser.parse_known_args(args)
    if opts.max_blocks is not None and opts.max_blocks < 1:
        parser.error(f"--max_blocks must be >= 1, got {opts.max_blocks}")
    return opts, rest


def load_ptq_run(config_args: list[str]) -> tuple[RunParts, PTQSettings]:
    """The run parts (alignment setup, schedule, shards) and the ``ptq:`` block of a PTQ config,
    parsed as ``fit`` parses it (no LightningModule, no Trainer)."""
    from saq_lightning.alignment.ptq import PTQSettings
    from saq_lightning.commands.run_config import load_run_parts, plain

    parts = load_run_parts(config_args)
    settings = parts.config.get("ptq")
    if settings is None:
        raise ValueError("the config has no `ptq:` block: add one (see configs/digits_w8a8_saptq.yaml) "
                         "or give --ptq.output DIR")
    if not isinstance(settings, PTQSettings):
        settings = PTQSettings(**plain(settings))
    return parts, settings


def ptq(args: list[str]) -> dict[str, Any]:
    """Entry point with parsed arguments; returns a summary (rank 0's view)."""
    from saq_lightning.alignment.ptq import CHECKPOINT, check_existing_student, run_ptq
    from saq_lightning.commands.run_config import RunConfigError
    from saq_lightning.quant.reconstruction import Comm

    opts, config_args = parse_options(args)
    placement = environment_placement() or Placement(0, 1, 0)
    device = choose_device(opts.accelerator, placement.local_rank)
    created = init_process_group(placement, device)
    try:
        parts, settings = load_ptq_run(config_args)
        shards, setup = parts.shards, parts.setup
        if shards is None:
            raise RunConfigError("data.init_args.shards is null: ptq calibrates on the trajectory shards that "
                             "`generate` writes; set data.init_args.shards")
        check_existing_student(setup, settings, shards, opts.overwrite)
        setup.to(device)
        comm = Comm(placement.rank, placement.world_size)
        report = run_ptq(setup, shards, settings, comm=comm, progress=opts.progress, max_blocks=opts.max_blocks)
    finally:
        if created:
            torch.distributed.destroy_process_group()
    summary = {"output": settings.output, "complete": report.complete, "blocks": len(report.blocks),
               "skipped": len(report.skipped)}
    if placement.rank == 0:
        state = "complete" if report.complete else "stopped (rerun to continue)"
        print(f"ptq {state}: {len(report.blocks)} blocks ({len(report.skipped)} loaded from an earlier run)"
              + (f"; student checkpoint {settings.output}/{CHECKPOINT}" if report.complete else ""))
    return summary


def main(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        sys.stdout.write(HELP)
        return
    requeue_on_sigusr1()  # under srun: SIGUSR1 requeues the job, which resumes from the finished blocks
    ptq(args)
