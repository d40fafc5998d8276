"""Solvers by name: ``make_solver("dpm++2m", schedule)``."""

from __future__ import annotations

from typing import Any

from .ddim import DDIM
from .dpm_solver import DPMSolver, DPMSolverMultistep
from .errors import SolverConfigError
from .plms import PLMS
from .schedules import NoiseSchedule
from .solver import Solver

#: name -> (solver class, the constructor arguments the name fixes)
_SOLVERS: dict[str, tuple[type[Solver], dict[str, Any]]] = {
    "ddim": (DDIM, {}),
    "plms": (PLMS, {}),
    "dpm1": (DPMSolver, {"order": 1}),
    "dpm2": (DPMSolver, {"order": 2}),
    "dpm3": (DPMSolver, {"order": 3}),
    "dpm2m": (DPMSolverMultistep, {"order": 2}),
    "dpm3m": (DPMSolverMultistep, {"order": 3}),
    "dpm++1": (DPMSolver, {"order": 1, "algorithm": "dpmsolver++"}),
    "dpm++2s": (DPMSolver, {"order": 2, "algorithm": "dpmsolver++"}),
    "dpm++3s": (DPMSolver, {"order": 3, "algorithm": "dpmsolver++"}),
    "dpm++2m": (DPMSolverMultistep, {"order": 2, "algorithm": "dpmsolver++"}),
    "dpm++3m": (DPMSolverMultistep, {"order": 3, "algorithm": "dpmsolver++"}),
}

SOLVER_NAMES: tuple[str, ...] = tuple(_SOLVERS)


def _entry(name: str) -> tuple[type[Solver], dict[str, Any]]:
    key = name.lower() if isinstance(name, str) else name
    if key not in _SOLVERS:
        raise SolverConfigError(f"solver must be one of {SOLVER_NAMES}, got {name!r}")
    return _SOLVERS[key]


def solver_order(name: str) -> int:
    """The default order a solver name stands for (``dpm2`` -> 2, ``dpm++3m`` -> 3; DDIM 1, PLMS 4)."""
    cls, fixed = _entry(name)
    return fixed.get("order", cls.order)


def model_calls_per_step(name: str, order: int | None = None) -> int:
    """Network evaluations per step: k for singlestep DPM-Solver(++)-k, 1 for DDIM, PLMS and the
    multistep solvers (which reuse earlier evaluations)."""
    cls, _ = _entry(name)
    return (order or solver_order(name)) if cls is DPMSolver else 1


def make_solver(name: str, schedule: NoiseSchedule, **options: Any) -> Solver:
    """A solver by name; ``options`` go to its constructor (e.g. ``eta``, ``solver_type``, ``order``).

    Names: ``ddim``, ``plms``, ``dpm1|dpm2|dpm3`` (singlestep DPM-Solver-k), ``dpm2m|dpm3m``
    (multistep DPM-Solver), ``dpm++1|dpm++2s|dpm++3s`` (singlestep DPM-Solver++),
    ``dpm++2m|dpm++3m`` (multistep DPM-Solver++). The number is the default order; a per-sample
    ``order`` given to ``sample``/``step_with_direction`` overrides it.
    """
    cls, fixed = _entry(name)
    try:
        return cls(schedule, **fixed, **options)
    except TypeError as err:  # an unknown option for this solver
        raise SolverConfigError(f"invalid option for solver {name!r}: {err}") from err
