"""Nothing a user already has is overwritten silently: the rule every command's outputs follow.

``sample`` and ``generate`` keep what matches their settings and refuse a folder made under other
settings (see ``metrics/sampling_run.py`` and ``data/shard_writer.py``). Commands whose outputs are
single result files (``evaluate``, ``diagnose``) and ``fit`` (checkpoints) use
:func:`refuse_existing`: an existing output is refused, naming the fields whose settings differ
(from the settings recorded in the output), unless ``overwrite`` is set, in which case the old
outputs are removed (:func:`clear_outputs`) before the new ones are written (so that nothing of the earlier run is mixed into the new one, e.g. two
event files in one TensorBoard folder).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from saq_lightning.errors import UserError
from saq_lightning.mismatches import diff_values


class OutputExistsError(UserError, FileExistsError):
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


def refuse_existing(command: str, outputs: Sequence[Path], settings: Mapping[str, Any],
                    recorded: Mapping[str, Any] | None, overwrite: bool,
                    alternative: str = "use another --out") -> None:
    """Raise :class:`OutputExistsError` for existing ``outputs`` (naming what differs from the
    ``recorded`` settings) unless ``overwrite``. Call it before the work starts."""
    found = existing(outputs)
    if found and not overwrite:
        names = ", ".join(str(p) for p in found)
        verb = "exists" if len(found) == 1 else "exist"
        raise OutputExistsError(
            f"{command}: {names} already {verb}, {describe_difference(recorded, settings)}; "
            f"{alternative}, or pass --overwrite true to replace them")


def clear_outputs(outputs: Sequence[Path]) -> None:
    """Remove the earlier run's outputs (right before the new ones are written)."""
    for path in existing(outputs):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def recorded_settings(json_file: Path, key: str = "settings") -> dict[str, Any] | None:
    """The settings an earlier run recorded in its JSON result (``None``: none recorded)."""
    import json

    try:
        value = json.loads(Path(json_file).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, dict) else None
