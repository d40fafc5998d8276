"""Solvers by name: ``make_solver("dpm++2m", schedule)``."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .ddim import DDIM
from .dpm_solver import DPMSolver, DPMSolverMultistep
from .errors import SolverConfigError
from .plms import PLMS
from .schedules import NoiseSchedule
from .solver import Solver

_FACTORIES: dict[str, Callable[..., Solver]] = {
    "ddim": lambda sch, **kw: DDIM(sch, **kw),
    "plms": lambda sch, **kw: PLMS(sch, **kw),
    "dpm1": lambda sch, **kw: DPMSolver(sch, order=1, **kw),
    "dpm2": lambda sch, **kw: DPMSolver(sch, order=2, **kw),
    "dpm3": lambda sch, **kw: DPMSolver(sch, order=3, **kw),
    "dpm2m": lambda sch, **kw: DPMSolverMultistep(sch, order=2, **kw),
    "dpm3m": lambda sch, **kw: DPMSolverMultistep(sch, order=3, **kw),
    "dpm++1": lambda sch, **kw: DPMSolver(sch, order=1, algorithm="dpmsolver++", **kw),
    "dpm++2s": lambda sch, **kw: DPMSolver(sch, order=2, algorithm="dpmsolver++", **kw),
    "dpm++3s": lambda sch, **kw: DPMSolver(sch, order=3, algorithm="dpmsolver++", **kw),
    "dpm++2m": lambda sch, **kw: DPMSolverMultistep(sch, order=2, algorithm="dpmsolver++", **kw),
    "dpm++3m": lambda sch, **kw: DPMSolverMultistep(sch, order=3, algorithm="dpmsolver++", **kw),
}

SOLVER_NAMES: tuple[str, ...] = tuple(_FACTORIES)
_DPM_NAME = re.compile(r"dpm(?:\+\+)?(?P<order>[123])(?P<kind>[ms]?)")


def solver_order(name: str) -> int:
    """The default order a solver name states (``dpm2`` -> 2, ``dpm++3m`` -> 3; DDIM 1, PLMS 4)."""
    key = name.lower()
    if key in ("ddim", "plms"):
        return 1 if key == "ddim" else 4
    match = _DPM_NAME.fullmatch(key)
    if match is None or key not in _FACTORIES:
        raise SolverConfigError(f"solver must be one of {SOLVER_NAMES}, got {name!r}")
    return int(match["order"])


def model_calls_per_step(name: str, order: int | None = None) -> int:
    """Network evaluations per step: k for singlestep DPM-Solver(++)-k, 1 for DDIM, PLMS and the
    multistep solvers (which reuse earlier evaluations)."""
    key = name.lower()
    singlestep = key not in ("ddim", "plms") and not key.endswith("m")
    return (order or solver_order(key)) if singlestep else 1


def make_solver(name: str, schedule: NoiseSchedule, **options: Any) -> Solver:
    """A solver by name; ``options`` go to its constructor (e.g. ``eta``, ``solver_type``, ``order``).

    Names: ``ddim``, ``plms``, ``dpm1|dpm2|dpm3`` (singlestep DPM-Solver-k), ``dpm2m|dpm3m``
    (multistep DPM-Solver), ``dpm++1|dpm++2s|dpm++3s`` (singlestep DPM-Solver++),
    ``dpm++2m|dpm++3m`` (multistep DPM-Solver++). The number is the default order; a per-sample
    ``order`` given to ``sample``/``step_with_direction`` overrides it.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in _FACTORIES:
        raise SolverConfigError(f"solver must be one of {SOLVER_NAMES}, got {name!r}")
    try:
        return _FACTORIES[key](schedule, **options)
    except TypeError as err:  # an unknown option for this solver
        raise SolverConfigError(f"invalid option for solver {name!r}: {err}") from err
