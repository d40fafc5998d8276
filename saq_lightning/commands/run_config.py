"""What ``generate`` and ``ptq`` take from a run config, built without Lightning's objects.

The config is read once by :func:`saq_lightning.lightning.run_cli.read_run_config` (parsed
exactly as ``fit`` parses it, nothing instantiated); from it come the alignment setup of the
``model:`` block (:class:`~saq_lightning.alignment.setup.SAQSetup`: teacher, student, flow,
conditions; never a LightningModule or a Trainer), the mixstep schedule of the top-level
``mixstep:`` block, the trajectory folder ``data.init_args.shards`` and the ``ptq:`` block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsonargparse import ArgumentParser, Namespace

from saq_lightning.alignment.setup import SAQSetup
from saq_lightning.callbacks.mixstep import MixStepCallback
from saq_lightning.data.mixstep import MixStepSchedule
from saq_lightning.errors import UserError
from saq_lightning.lightning.module import SAQLightningModule
from saq_lightning.lightning.run_cli import read_run_config, refuse_mixstep_in_callbacks


class RunConfigError(UserError, ValueError):
    """A run config that lacks what the command needs (a mixstep schedule, a shards folder)."""


@dataclass
class RunParts:
    """The parts of a run config that ``generate`` and ``ptq`` use."""

    setup: SAQSetup
    schedule: MixStepSchedule | None
    shards: str | None
    config: Namespace


def plain(value: Any) -> Any:
    """A parsed value as plain data (jsonargparse's ``__path__`` marks of nested files dropped)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def model_args(config: Namespace) -> dict[str, Any]:
    """``model.init_args`` of a run config as plain data; the model must be an ``SAQLightningModule``
    (its arguments are the setup's)."""
    model = config.get("model")
    class_path = model.get("class_path") if isinstance(model, Namespace) else None
    if class_path is None:
        raise ValueError("the config has no `model:` block with a class_path (an SAQLightningModule)")
    from jsonargparse._util import import_object

    cls = import_object(class_path)
    if not (isinstance(cls, type) and issubclass(cls, SAQLightningModule)):
        raise ValueError(f"model.class_path is {class_path}: generate and ptq read the arguments of an "  # noqa: TRY004
                         f"SAQLightningModule")
    return plain(model.get("init_args") or {})


def mixstep_schedule(config: Namespace) -> MixStepSchedule | None:
    """The schedule of the config's top-level ``mixstep:`` block, or None."""
    refuse_mixstep_in_callbacks(config)
    block = config.get("mixstep")
    if block is None:
        return None
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--mixstep", type=MixStepCallback | None, default=None)
    return parser.instantiate_classes(parser.parse_object({"mixstep": plain(block)})).mixstep.schedule


def shards_folder(config: Namespace) -> str | None:
    """``data.init_args.shards`` (None: the on-the-fly mode)."""
    return config.get("data.init_args.shards")


def load_run_parts(config_args: list[str]) -> RunParts:
    """Read a run config once and build its alignment setup (no LightningModule, no Trainer)."""
    config = read_run_config(config_args).config
    setup = SAQSetup.from_model_args(model_args(config))
    return RunParts(setup, mixstep_schedule(config), shards_folder(config), config)
