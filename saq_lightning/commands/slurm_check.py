"""What the ``slurm/*.sbatch`` scripts check on the compute node before ``srun`` starts anything.

    python -m saq_lightning.commands.slurm_check fit <config> [LightningCLI overrides...]
    python -m saq_lightning.commands.slurm_check generate|ptq|sample|evaluate <config> [options...]

- the config exists there (a path valid on the login node may not be on the compute node);
- ``fit``: the job's ``--ntasks-per-node`` equals the trainer's ``devices`` and its node count the
  trainer's ``num_nodes`` (Lightning starts one process per task and expects one per device);
- ``fit`` in a requeued job: nothing more here. The task itself compares the config with the one
  the job's checkpoint was written under before it builds anything (a field-by-field diff, exit 2;
  :func:`saq_lightning.lightning.slurm.resolve_resume_ckpt`), so this check stays cheap on every
  restart: it reads the YAML files and the overrides, and imports neither torch nor Lightning
  (it took 46-71 s at load 13 when it parsed the config with LightningCLI). Arguments only the
  full parser understands (``--trainer`` as one value, a ``--print_config``) fall back to it;
  ``devices: auto`` on a GPU node imports torch to count the GPUs.
- ``evaluate``: one task (it is a single process), ``sample`` in a job array: one task per array
  element.

Exit status 2 with one message on stderr when a check fails; one line on stdout when all pass.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from saq_lightning.errors import UserError


class SlurmCheckError(UserError, ValueError):
    """The job cannot start as submitted; the message says what to change."""


def _config_paths(args: list[str]) -> list[str]:
    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    return paths + [a.split("=", 1)[1] for a in args if a.startswith("--config=")]


def check_configs_exist(args: list[str]) -> None:
    for path in _config_paths(args):
        if not Path(path).is_file():
            raise SlurmCheckError(f"config {path} does not exist on {os.uname().nodename} (working directory "
                                  f"{os.getcwd()}); put it on storage the compute nodes share, or give an "
                                  "absolute path")


def resolve_devices(devices: Any, accelerator: Any) -> int | None:
    """How many processes per node Lightning expects for ``trainer.devices`` (None: cannot tell)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    text = str(devices).strip()
    if text.lstrip("-").isdigit() and int(text) >= 1:
        return int(text)
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    if text in ("auto", "-1"):
        import torch

        if str(accelerator) == "cpu" or not torch.cuda.is_available():
            return 1
        return torch.cuda.device_count()
    return None


def tasks_per_node(env: Mapping[str, str]) -> int:
    if "SLURM_NTASKS_PER_NODE" in env:
        return int(env["SLURM_NTASKS_PER_NODE"].split("(")[0])
    if int(env.get("SLURM_NTASKS", "1")) > 1:
        raise SlurmCheckError(f"the job has --ntasks={env['SLURM_NTASKS']} without --ntasks-per-node; Lightning "
                              "needs --ntasks-per-node (equal to trainer.devices)")
    return 1


def check_fit_layout(trainer: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """``--ntasks-per-node`` == ``trainer.devices`` and ``--nodes`` == ``trainer.num_nodes``."""
    devices = resolve_devices(trainer.get("devices", "auto"), trainer.get("accelerator", "auto"))
    per_node = tasks_per_node(env)
    if devices is not None and devices != per_node:
        raise SlurmCheckError(
            f"--ntasks-per-node={per_node} but trainer.devices is {trainer.get('devices')} ({devices} "
            f"process(es) per node): they must be equal, one task per device. Submit with "
            f"--ntasks-per-node={devices}, or override --trainer.devices {per_node}")
    nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
    num_nodes = int(trainer.get("num_nodes") or 1)
    if nodes != num_nodes:
        raise SlurmCheckError(f"the job has {nodes} node(s) but trainer.num_nodes is {num_nodes}: submit with "
                              f"--nodes={num_nodes}, or override --trainer.num_nodes {nodes}")
    return f"{nodes} node(s) x {per_node} task(s), one per device"


LIGHT_TRAINER_KEYS = ("devices", "num_nodes", "accelerator")


def light_trainer_settings(args: list[str]) -> dict[str, Any] | None:
    """``trainer.devices``/``num_nodes``/``accelerator`` from the ``--config`` YAML files and the
    ``--trainer.<key>`` overrides, in the order given (later wins, as in jsonargparse); ``None`` when
    an argument needs the full parser."""
    import yaml

    trainer: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            return None
        if "=" in arg:
            key, value, i = *arg.split("=", 1), i + 1
        elif i + 1 < len(args):
            key, value, i = arg, args[i + 1], i + 2
        else:
            return None
        if key == "--config":
            loaded = yaml.safe_load(Path(value).read_text()) or {}
            section = loaded.get("trainer") if isinstance(loaded, dict) else None
            if not isinstance(loaded, dict) or not isinstance(section or {}, dict):
                return None
            trainer.update({k: v for k, v in (section or {}).items() if k in LIGHT_TRAINER_KEYS})
        elif key in ("--trainer", "--print_config"):
            return None
        elif key.startswith("--trainer.") and key.split(".", 1)[1] in LIGHT_TRAINER_KEYS:
            trainer[key.split(".", 1)[1]] = yaml.safe_load(value)
    return trainer


def parse_fit(args: list[str]) -> tuple[Any, Any]:
    """The parsed ``fit`` config and the SLURM resume decision, exactly as ``fit`` makes them (the
    CLI's own hook runs), with nothing built."""
    from saq_lightning.lightning.run_cli import read_run_config

    parsed = read_run_config(args, subcommand="fit")
    return parsed.config, parsed.slurm_run


def check(command: str, args: list[str], env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    check_configs_exist(args)
    ntasks = int(env.get("SLURM_NTASKS", "1"))
    if command == "evaluate" and ntasks != 1:
        raise SlurmCheckError(f"evaluate is one process; submit it with --ntasks=1 (the job has {ntasks})")
    if command == "sample" and "SLURM_ARRAY_TASK_ID" in env and ntasks != 1:
        raise SlurmCheckError(f"a sampling job array runs one task per array element (the job has {ntasks}); "
                              "use either --array or --ntasks-per-node, not both")
    if command != "fit":
        return f"{command}: config found"
    trainer = light_trainer_settings(args)
    if trainer is not None:
        return f"fit: {check_fit_layout(trainer, env)}"
    from saq_lightning.lightning.run_cli import MixStepPlacementError
    from saq_lightning.lightning.slurm import SlurmResumeError

    try:
        config, run = parse_fit(args)
    except (SlurmResumeError, MixStepPlacementError) as err:
        raise SlurmCheckError(str(err)) from err
    layout = check_fit_layout(config.trainer.as_dict() if hasattr(config.trainer, "as_dict") else config.trainer,
                              env)
    if run is not None and run.resume is not None:
        resume = f"resumes {run.resume.path} (step {run.resume.global_step})"
    else:
        resume = "starts fresh" if config.get("ckpt_path") is None else f"resumes {config.get('ckpt_path')}"
    return f"fit: {layout}; {resume}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("fit", "generate", "ptq", "sample", "evaluate"):
        print("usage: python -m saq_lightning.commands.slurm_check fit|generate|ptq|sample|evaluate --config <config> "
              "[overrides...]", file=sys.stderr)
        return 2
    try:
        print(check(argv[0], argv[1:]), flush=True)
    except SlurmCheckError as err:
        print(f"slurm/{argv[0]}.sbatch: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
