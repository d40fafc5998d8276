"""Field-by-field differences between what a run expects and what it found, and their message.

Shards, checkpoints, resumes, SLURM requeues and output folders all refuse input made under other
settings by naming every differing field (``phases[1].student_steps: expected 10, found 20``).
This is the one copy of that comparison: values are compared as their JSON form (tuples as lists,
numpy/torch scalars as numbers), floats with a relative tolerance of 1e-9, booleans by identity.

Imports nothing of the package: every layer may import it.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: the stand-in for a key one side lacks
MISSING = "<missing>"

#: ``(field, expected, found)``
Mismatch = tuple[str, Any, Any]


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and tuples as lists: equal objects give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=json_default)


def json_default(obj: Any) -> Any:
    """``json.dumps``'s ``default`` for tuples, sets and numpy/torch scalars."""
    if isinstance(obj, (tuple, set, frozenset)):
        return list(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"manifest meta value {obj!r} of type {type(obj).__name__} is not JSON")


def plain(obj: Any) -> Any:
    """Round-trip through JSON so that tuples, numpy scalars etc. compare like stored values."""
    return json.loads(canonical_json(obj))


def values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return a == b


def diff_values(expected: Any, found: Any, path: str, subset: bool) -> list[Mismatch]:
    """``(field, expected, found)`` for every difference; ``subset`` ignores extra found keys."""
    expected, found = plain(expected), plain(found)
    if isinstance(expected, dict) and isinstance(found, dict):
        out: list[Mismatch] = []
        keys = expected.keys() if subset else sorted(set(expected) | set(found))
        for key in keys:
            sub = f"{path}.{key}" if path else str(key)
            out += diff_values(expected.get(key, MISSING), found.get(key, MISSING), sub, subset)
        return out
    if isinstance(expected, list) and isinstance(found, list) and len(expected) == len(found):
        out = []
        for i, (e, f) in enumerate(zip(expected, found)):
            out += diff_values(e, f, f"{path}[{i}]", subset)
        return out
    return [] if values_equal(expected, found) else [(path, expected, found)]


def format_mismatches(where: str, mismatches: list[Mismatch]) -> str:
    """``where:`` and one indented ``field: expected X, found Y`` line per mismatch."""
    lines = [f"  {name}: expected {exp!r}, found {got!r}" for name, exp, got in mismatches]
    return f"{where}:\n" + "\n".join(lines)
