"""Errors of the trajectory-shard data layer.

Every error names what is wrong (the shard file, the manifest field) so that a failed run can be
fixed without a debugger.
"""

from __future__ import annotations

from typing import Any

from saq_lightning.errors import UserError


class ShardError(UserError, RuntimeError):
    """A shard is missing, truncated, corrupt, or disagrees with its manifest entry.

    The message always starts with the shard's path. The constructor takes one string so that
    DataLoader worker processes can re-raise it in the main process.
    """


class ManifestError(UserError, ValueError):
    """A manifest is missing, incomplete or not a trajectory manifest."""


class ManifestMismatchError(ManifestError):
    """A manifest field differs from what the caller expects (or from an earlier run's meta)."""

    def __init__(self, message: str, mismatches: list[tuple[str, Any, Any]] | None = None) -> None:
        super().__init__(message)
        #: ``(field, expected, found)`` for every differing field.
        self.mismatches = list(mismatches or [])

    def __reduce__(self):  # keep the mismatches when pickled across processes
        return (type(self), (self.args[0], self.mismatches))


class ResumeMismatchError(UserError, RuntimeError):
    """A checkpoint's data position was saved under another data configuration."""


class PhaseError(UserError, ValueError):
    """A mixstep phase the run cannot serve (e.g. a student grid the timestep buckets do not fit)."""
