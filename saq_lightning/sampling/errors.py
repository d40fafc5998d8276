"""Exceptions raised by the sampler library.

All are ``ValueError``/``TypeError`` subclasses, so callers that only know the builtins still
catch them; their messages name the offending argument and what was expected.
"""

from __future__ import annotations

from saq_lightning.errors import UserError


class SamplingError(UserError, ValueError):
    """Base class for invalid input to the sampler library."""


class ScheduleError(SamplingError):
    """An unknown or malformed noise schedule, or a time outside the schedule's range."""


class GridError(SamplingError):
    """A time grid that is not strictly decreasing in noise, is empty, or lies outside [0, 1]."""


class SolverConfigError(SamplingError):
    """An unknown solver, an unsupported order, or a step count the solver cannot use."""


class ModelOutputError(SamplingError):
    """The noise predictor returned a tensor of the wrong shape."""


class ModelOutputTypeError(TypeError):
    """The noise predictor returned something that is not a tensor."""
