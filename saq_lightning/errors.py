"""The one base class of the errors a person can fix: :class:`UserError`.

A user error is bad input (a config field, a file, shards or a checkpoint that do not fit the run,
an output that would be overwritten), not a bug. Each such exception subclasses ``UserError``
where it is defined, next to its builtin base (``class ShardError(UserError, RuntimeError)``), so
that code which catches the builtin keeps working and the command line (``user_errors.py``)
catches every one of them by this class alone, without a list of classes from every layer.

Imports nothing of the package: every layer may import it.
"""

from __future__ import annotations


class UserError(Exception):
    """Input a person can fix; the command line shows its message in one line and exits with 2."""
