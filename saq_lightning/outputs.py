"""Nothing a user already has is overwritten silently: the rule every command's outputs follow.

``sample`` and ``generate`` keep what matches their settings and refuse a folder made under other
settings (see ``metrics/sampling_run.py`` and ``data/shard_writer.py``). Commands whose outputs are
single result files (``evaluate``, ``diagnose``) and ``fit`` (checkpoints) use
:func:`prepare_outputs`: an existing output is refused, naming the fields whose settings differ
(from the settings recorded in the output), unless ``overwrite`` is set, in which case the old
outputs are removed first (so that nothing of the earlier run is mixed into the new one, e.g. two
event files in one TensorBoard folder).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saq_lightning.data.manifest import diff_values


class OutputExistsError(FileExistsError):
    """An output of the command already exists and ``--overwrite`` was not given."""

    def __str__(self) -> str:  # FileExistsError's str() would drop a one-argument message's form
        return str(self.args[0]) if self.args else ""


def existing(outputs: Sequence[Path]) -> list[Path]:
    """The outputs that exist (a folder counts when it is not empty)."""
    return [p for p in map(Path, outputs)
            if p.is_file() or (p.is_dir() and any(p.iterdir()))]


def describe_difference(recorded: Mapping[str, Any] | None, settings: Mapping[str, Any]) -> str:
    """``written with other settings: steps: 10 then, 20 now; ...`` (or the same / unrecorded)."""
    if recorded is None:
        return "written by an earlier run that recorded no settings"
    mismatches = diff_values(dict(recorded), dict(settings), "", subset=False)
    if not mismatches:
        return "written by an earlier run with the same settings"
    fields = "; ".join(f"{name}: {old!r} then, {new!r} now" for name, old, new in mismatches)
    return f"written by an earlier run with other settings ({fields})"


def prepare_outputs(command: str, outputs: Sequence[Path], settings: Mapping[str, Any],
                    recorded: Mapping[str, Any] | None, overwrite: bool,
                    alternative: str = "use another --out") -> None:
    """Refuse existing ``outputs`` (naming what differs) or, with ``overwrite``, remove them."""
    found = existing(outputs)
    if not found:
        return
    if not overwrite:
        names = ", ".join(str(p) for p in found)
        raise OutputExistsError(
            f"{command}: {names} already exist(s), {describe_difference(recorded, settings)}; "
            f"{alternative}, or pass --overwrite true to replace them")
    for path in found:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
