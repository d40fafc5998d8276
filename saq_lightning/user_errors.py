"""Errors a person can read: known user errors end in one short message and exit code 2.

A known user error is a bad config (a typo, a wrong type, a missing file), a path that does not
exist, shards or a checkpoint that do not fit the run, an output that would be overwritten, bad
data. For those the command line prints::

    error: <what is wrong, where (file, field, phase), what was expected>
    (python -m saq_lightning ... --traceback, or SAQ_TRACEBACK=1, shows the traceback)

and exits with code 2 (argparse's code for a usage error). Anything else is a bug or an
environment failure and keeps its full traceback. A config typo names the bad key and the
nearest valid ones, instead of jsonargparse's usage text and the whole parsed value.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from argparse import ArgumentError
from collections.abc import Iterator
from contextlib import contextmanager

TRACEBACK_FLAG = "--traceback"
TRACEBACK_ENV = "SAQ_TRACEBACK"
EXIT_CODE = 2


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exception classes that mean "the input is wrong", not "the code is wrong"."""
    from saq_lightning.alignment.checkpointing import CheckpointMismatchError
    from saq_lightning.callbacks.nonfinite import NonFiniteLossError
    from saq_lightning.data.batch_check import DataValueError
    from saq_lightning.data.errors import ManifestError, PhaseError, ResumeMismatchError, ShardError
    from saq_lightning.files import UnreadableFileError
    from saq_lightning.lightning.run_lock import RunFolderBusyError
    from saq_lightning.metrics.npz_format import SampleFormatError
    from saq_lightning.metrics.sampling_run import RunMismatchError
    from saq_lightning.models.key_accounting import CheckpointKeyError
    from saq_lightning.outputs import OutputExistsError
    from saq_lightning.quant.export import ExportMismatchError
    from saq_lightning.quant.kernels import QuantKernelsError
    from saq_lightning.sampling.errors import SamplingError

    return (ArgumentError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            ShardError, ManifestError, PhaseError, ResumeMismatchError, CheckpointMismatchError, CheckpointKeyError,
            RunMismatchError, SampleFormatError, SamplingError, OutputExistsError, NonFiniteLossError,
            DataValueError, RunFolderBusyError, UnreadableFileError, ExportMismatchError, QuantKernelsError)


def split_traceback_flag(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--traceback``, and whether a traceback was asked for (flag or env var)."""
    wanted = TRACEBACK_FLAG in argv or os.environ.get(TRACEBACK_ENV, "") not in ("", "0", "false")
    return [a for a in argv if a != TRACEBACK_FLAG], wanted


@contextmanager
def user_errors(argv: list[str], show_traceback: bool) -> Iterator[None]:
    """Turn a known user error raised inside into one message on stderr and ``SystemExit(2)``."""
    try:
        yield
    except user_error_types() as error:
        if show_traceback:
            raise
        sys.stderr.write(f"error: {describe(error, argv)}\n"
                         f"(add {TRACEBACK_FLAG} or set {TRACEBACK_ENV}=1 to see the traceback)\n")
        raise SystemExit(EXIT_CODE) from None


def describe(error: BaseException, argv: list[str]) -> str:
    """The one message shown for ``error``."""
    if isinstance(error, ArgumentError):
        return describe_argument_error(str(error), argv)
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"no such file or folder: {error.filename}"
    message = str(error)
    return message if message else type(error).__name__


_OPTION = re.compile(r"Option '([^']+)' is not accepted")
_GROUP = re.compile(r"(?:Group|Subcommand) '([^']+)' does not accept option '([^']+)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (\S+)")
_WRONG_TYPE = re.compile(r"Expected a <class '([^']+)'>\. Got value: (.*)")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"class_path '([^']+)'")
_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:",
          "Given value", "Expected a <class 'NoneType'>")


def describe_argument_error(message: str, argv: list[str]) -> str:
    """A jsonargparse error in one or two lines: the bad key with its nearest valid ones."""
    where = _config_files(argv)
    option, group = _OPTION.search(message), _GROUP.search(message)
    if option:
        keys = _PARSER_KEY.findall(message)
        classes = _CLASS_PATH.findall(message)
        bad = option.group(1)
        section = ".".join(keys) or "the config"
        return _unknown_key(bad, section, _parameters(classes[-1]) if classes else [], where)
    if group:
        section, bad = group.groups()
        if "." in bad:  # Subcommand 'fit' does not accept option 'trainer.max_stepz'
            section, _, bad = bad.rpartition(".")
        return _unknown_key(bad, section, _parameters(_GROUP_CLASSES.get(section, "")), where)
    wrong_type = _WRONG_TYPE.search(message)
    if wrong_type:
        keys = ".".join(_PARSER_KEY.findall(message))
        expected, got = wrong_type.groups()
        return f"{keys}: expected {expected}, got {got.strip()!r}{_in(where)}"
    unrecognized = _UNRECOGNIZED.search(message)
    if unrecognized:
        flag = unrecognized.group(1)
        section, _, bad = flag.lstrip("-").rpartition(".")
        if section:
            candidates = [f"--{section}.{p}" for p in _parameters(_GROUP_CLASSES.get(section, ""))]
        else:
            candidates = [f"--{p}" for p in _command_parameters(argv)]
        near = _nearest(flag, candidates)
        hint = f"; did you mean {near}?" if near else ""
        return f"unknown option {flag}{hint} (--help lists the options)"
    lines = [line.strip() for line in message.splitlines()
             if line.strip() and not any(line.strip().startswith(n) or n in line for n in _NOISE)]
    text = " ".join(lines) if lines else message
    return re.sub(r'^Parser key "config": ', "", text) + ("" if "config" in text[:30] else _in(where))


#: config groups whose valid keys are a class's parameters
_GROUP_CLASSES = {"trainer": "lightning.pytorch.Trainer"}


def _unknown_key(bad: str, section: str, candidates: list[str], where: list[str]) -> str:
    near = _nearest(bad, candidates)
    hint = f"; nearest valid: {near}" if near else ""
    return f"unknown key '{bad}' in {section}{_in(where)}{hint}"


def _nearest(bad: str, candidates: list[str]) -> str:
    return ", ".join(difflib.get_close_matches(bad, candidates, n=3, cutoff=0.6))


def _parameters(target: str) -> list[str]:
    """The parameter (or dataclass field) names of ``module.Class``; [] if it cannot be imported."""
    if not target:
        return []
    module, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), name)
        return [p for p in inspect.signature(obj).parameters if p not in ("self", "args", "kwargs")]
    except (ImportError, AttributeError, ValueError, TypeError):
        return []


def _command_parameters(argv: list[str]) -> list[str]:
    """The options of a pipeline command ``name`` (the function ``commands.<name>.<name>``)."""
    name = argv[0] if argv else ""
    return _parameters(f"saq_lightning.commands.{name}.{name}") if name.isidentifier() else []


def _config_files(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]


def _in(where: list[str]) -> str:
    return f" (config {', '.join(where)})" if where else ""
