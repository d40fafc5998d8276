"""``python -m saq_lightning generate --config <the fit config>``: teacher trajectories -> shards.

The same YAML drives ``generate`` and ``fit``: the teacher, guidance, solver family and spacing
come from ``model``, the phases from the top-level ``mixstep:`` block, the output
folder is ``data.shards``, the layout ``model.generation``. Any LightningCLI override works here
as it does for ``fit`` (``--model.generation.trajectories_per_phase 512``).

Several devices: ``--devices N`` starts N local processes (rank r on ``cuda:r``); under
``torchrun`` or ``srun`` the rank and world size come from the environment. Each rank writes the
shards ``k % world_size == rank``; the last one to finish completes ``manifest.json``. Rerunning
the command resumes: finished shards are kept, a half-written shard is redone.
"""

from __future__ import annotations

import argparse
import sys

from saq_lightning.commands.placement import requeue_on_sigusr1
from saq_lightning.devices import choose_device
from saq_lightning.distributed import Placement, environment_placement

HELP = """usage: python -m saq_lightning generate --config CONFIG [LightningCLI overrides] [options]

Roll out the frozen FP teacher over every phase of the mixstep schedule and write WebDataset
shards of trajectory points (x_s, s, t, order, steps, phase, cond, eps_eff) plus manifest.json.

options:
  --config CONFIG        the training config (the same file `fit` takes); repeatable
  --devices N            local processes, one per device (default 1)
  --accelerator {auto,cpu,cuda}
                         where the teacher runs (default auto: cuda if available)
  --rank R --world_size W
                         write only rank R's shards of W (default: from torchrun/srun, else 0 of 1)
  --progress {true,false}
                         show a progress bar (default true)
  --verify               generate nothing: check every shard of the existing folder against its
                         manifest (size and sha256) and report the bad ones
Any other argument is a LightningCLI override of the config (e.g. --model.generation.seed 1).
"""


def _bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_options(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split the generate options from the LightningCLI config arguments."""
    parser = argparse.ArgumentParser(prog="python -m saq_lightning generate", add_help=False)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--accelerator", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--world_size", type=int, default=None)
    parser.add_argument("--progress", type=_bool, default=True)
    parser.add_argument("--verify", action="store_true")
    opts, rest = parser.parse_known_args(args)
    if opts.devices < 1:
        parser.error(f"--devices must be >= 1, got {opts.devices}")
    if (opts.rank is None) != (opts.world_size is None):
        parser.error("give both --rank and --world_size, or neither")
    return opts, rest




def shards_folder(config_args: list[str]) -> str | None:
    """``data.init_args.shards`` of a config, parsed without building anything."""
    from saq_lightning.commands.run_config import read_run_config
    from saq_lightning.commands.run_config import shards_folder as config_shards

    return config_shards(read_run_config(config_args).config)


def _report_folder(config_args: list[str]) -> dict:
    from saq_lightning.data.manifest import load_manifest

    folder = shards_folder(config_args)
    manifest = load_manifest(folder)
    print(f"manifest complete: {manifest.count} trajectory points in {manifest.layout.num_shards} "
          f"shards of {folder} (per phase: {manifest.phase_counts})")
    return {"folder": str(folder), "complete": True, "count": manifest.count,
            "phase_counts": manifest.phase_counts, "num_shards": manifest.layout.num_shards}


def run_rank(config_args: list[str], placement: Placement, accelerator: str, progress: bool) -> dict:
    """Build the run on this rank's device and write its shards; returns a summary."""
    from saq_lightning.alignment.generation import generate_trajectories
    from saq_lightning.commands.run_config import RunConfigError, load_run_parts

    parts = load_run_parts(config_args)
    if parts.schedule is None:
        raise RunConfigError("the config has no mixstep schedule (the top-level `mixstep:` block): generate "
                         "rolls out the phases of the mixstep schedule (see docs/training.md)")
    folder = parts.shards
    if folder is None:
        raise RunConfigError("data.shards is null (on-the-fly mode): there is nothing to generate; set "
                         "data.init_args.shards to the trajectory folder")
    device = choose_device(accelerator, placement.local_rank)
    report = generate_trajectories(parts.setup, parts.schedule, folder, rank=placement.rank,
                                   world_size=placement.world_size, device=device,
                                   progress=progress and placement.rank == 0)
    summary = {"folder": str(folder), "rank": placement.rank, "written": report.written,
               "kept": report.kept, "complete": report.manifest is not None}
    if report.manifest is not None:
        summary.update(count=report.manifest.count, phase_counts=report.manifest.phase_counts,
                       num_shards=report.manifest.layout.num_shards)
    return summary


def _spawned(local_rank: int, config_args: list[str], world: int, accelerator: str,
             progress: bool) -> None:
    run_rank(config_args, Placement(local_rank, world, local_rank), accelerator, progress)


def _print_summary(summary: dict) -> None:
    print(f"rank {summary['rank']}: wrote {len(summary['written'])} shard(s), kept "
          f"{len(summary['kept'])} finished one(s) in {summary['folder']}")
    if summary["complete"]:
        print(f"manifest complete: {summary['count']} trajectory points in "
              f"{summary['num_shards']} shards (per phase: {summary['phase_counts']})")
    else:
        print("manifest not complete yet: other ranks are still writing their shards")


def verify_folder(config_args: list[str]) -> dict:
    """Check every shard of the config's trajectory folder (size and sha256 against the manifest);
    raise :class:`ShardError` naming every bad one."""
    from pathlib import Path

    from saq_lightning.data.errors import ShardError
    from saq_lightning.data.manifest import load_manifest
    from saq_lightning.data.shard_reader import check_shard_file

    folder = shards_folder(config_args)
    if folder is None:
        raise ShardError("data.shards is null (on-the-fly mode): there are no shards to verify")
    manifest = load_manifest(folder)
    bad = [(s.name, why) for s in manifest.shards
           if (why := check_shard_file(Path(folder) / s.name, s, "sha256")) is not None]
    if bad:
        listed = "; ".join(f"{Path(folder) / name}: {why}" for name, why in bad)
        raise ShardError(f"{len(bad)} of {len(manifest.shards)} shard(s) failed verification: {listed} "
                         f"(delete them and rerun generate to redo them)")
    print(f"verified {len(manifest.shards)} shards of {folder}: sizes and sha256 match the manifest")
    return {"folder": str(folder), "verified": len(manifest.shards)}


def generate(args: list[str]) -> dict | None:
    """Entry point with parsed command-line arguments; returns rank 0's summary in-process."""
    opts, config_args = parse_options(args)
    if opts.verify:
        return verify_folder(config_args)
    requeue_on_sigusr1()  # under srun: SIGUSR1 requeues the job, which keeps the finished shards
    if opts.rank is not None:
        placement = Placement(opts.rank, opts.world_size, opts.rank)
    else:
        placement = environment_placement()
    if placement is None and opts.devices > 1:
        import torch.multiprocessing as mp

        mp.start_processes(_spawned, args=(config_args, opts.devices, opts.accelerator, opts.progress),
                           nprocs=opts.devices, join=True, start_method="spawn")
        return _report_folder(config_args)
    summary = run_rank(config_args, placement or Placement(0, 1, 0), opts.accelerator, opts.progress)
    _print_summary(summary)
    return summary


def main(args: list[str]) -> None:
    if any(a in ("-h", "--help") for a in args):
        sys.stdout.write(HELP)
        return
    generate(args)
