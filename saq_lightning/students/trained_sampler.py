"""The sampler a trained student was aligned to, read from its checkpoint.

A student is trained for one sampler. A ``fit`` checkpoint says it through its mixstep phases (the
first phase's ``student_solver``, default the run's solver family, its ``student_order`` and step
count) and the run's spacing and guidance scale (``docs/training.md``, "Sampling a trained
student"); a ``ptq`` checkpoint (``student.ckpt``) records the sampler its pairs were built for
(``checkpoint["ptq"]["sampler"]``, ``docs/quant.md``). ``sample`` takes its defaults from here
(through ``StudentRef.trained_sampler()``), so
that ``sample --student last.ckpt`` samples the student as it was trained; an explicit option that
departs from it prints one line saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: singlestep families: the solver name of each order (one name per order: no override needed)
_SINGLESTEP = {"dpm": {1: "dpm1", 2: "dpm2", 3: "dpm3"}, "dpm++": {1: "dpm++1", 2: "dpm++2s", 3: "dpm++3s"}}
#: multistep families: order 1 is the family's first-order step (DDIM = DPM-Solver-1)
_MULTISTEP = {"dpm_multistep": {1: "dpm1", 2: "dpm2m", 3: "dpm3m"},
              "dpm++_multistep": {1: "dpm++1", 2: "dpm++2m", 3: "dpm++3m"}}


def sampler_for(family: str, order: int) -> tuple[str, int | None]:
    """``(solver name, order override)`` that samples a student of solver ``family`` at ``order``:
    ``dpm``/2 -> ``dpm2``, ``dpm++_multistep``/2 -> ``dpm++2m``, ``plms``/3 -> (``plms``, 3)
    (PLMS' name stands for order 4, so its order is given explicitly).

    Raises:
        ValueError: an unknown family or an order the family does not have.
    """
    order = int(order)
    if family == "plms":
        if order not in (1, 2, 3, 4):
            raise ValueError(f"a plms student has order 1..4, got {order}")
        return "plms", (None if order == 4 else order)
    table = {**_SINGLESTEP, **_MULTISTEP}.get(family)
    if table is None:
        raise ValueError(f"unknown solver family {family!r} (expected one of "
                         f"{sorted([*_SINGLESTEP, *_MULTISTEP, 'plms'])})")
    if order not in table:
        raise ValueError(f"a {family} student has order 1..3, got {order}")
    return table[order], None


def trained_sampler_of(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """``{solver, [order], student_order, steps, spacing, guidance_scale, trained_steps}`` of a student
    checkpoint's contents (``StudentRef.trained_sampler()`` gives ``{}`` for the FP model, a naive
    student or an export folder, which record no training). ``order`` is present only where the
    solver name does not fix it (a PLMS-3 student)."""
    ptq = checkpoint.get("ptq")
    if isinstance(ptq, Mapping) and isinstance(ptq.get("sampler"), Mapping):
        return ptq_sampler(ptq["sampler"])
    hparams = checkpoint.get("hyper_parameters") or {}
    phases = _phases(hparams, checkpoint.get("callbacks") or {})
    out: dict[str, Any] = {}
    if "guidance_scale" in hparams:
        out["guidance_scale"] = float(hparams["guidance_scale"])
    if "spacing" in hparams:
        out["spacing"] = str(hparams["spacing"])
    if phases:
        first = phases[0]
        order = int(first["student_order"])
        family = str(first.get("student_solver") or hparams.get("teacher_solver", "dpm"))
        solver, override = sampler_for(family, order)
        out["solver"] = solver
        if override is not None:
            out["order"] = override
        out["student_order"] = order
        out["steps"] = int(first["student_steps"])
        out["trained_steps"] = sorted({int(p["student_steps"]) for p in phases})
    return out


def ptq_sampler(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """The trained-sampler dict of a PTQ checkpoint's ``ptq.sampler`` record."""
    out: dict[str, Any] = {"solver": str(recorded["solver"]), "steps": int(recorded["steps"]),
                           "spacing": str(recorded["spacing"]),
                           "guidance_scale": float(recorded["guidance_scale"]),
                           "student_order": int(recorded["order"]),
                           "trained_steps": [int(recorded["steps"])]}
    if recorded.get("order_override") is not None:
        out["order"] = int(recorded["order_override"])
    return out


def _phases(hparams: Mapping[str, Any], callbacks: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's mixstep phases: from the module's hyperparameters (``mixstep``), or, in a
    checkpoint written before the schedule was recorded there, from the MixStepCallback's state."""
    if isinstance(hparams.get("mixstep"), Mapping):
        return list(hparams["mixstep"].get("phases") or [])
    for name, state in callbacks.items():
        if "MixStepCallback" in str(name) and isinstance(state, Mapping):
            return list((state.get("schedule") or {}).get("phases") or [])
    return []


def departures(trained: Mapping[str, Any], setting: Any) -> list[str]:
    """What of ``setting`` (a :class:`SamplerSetting`) differs from what the student was trained for."""
    notes = []
    for name in ("solver", "spacing", "guidance_scale"):
        if name in trained and getattr(setting, name) != trained[name]:
            notes.append(f"{name} {getattr(setting, name)!r} (trained: {trained[name]!r})")
    if "trained_steps" in trained and setting.steps not in trained["trained_steps"]:
        notes.append(f"steps {setting.steps} (trained: {trained['trained_steps']})")
    trained_order = trained.get("order")
    if setting.order is not None and setting.order != trained.get("student_order", setting.order):
        notes.append(f"order {setting.order} (trained: {trained['student_order']})")
    elif setting.order is None and trained_order is not None and setting.solver == trained.get("solver"):
        notes.append(f"order {setting.solver}'s default (trained: {trained_order})")
    return notes


def departure_line(trained: Mapping[str, Any], setting: Any, student: str) -> str | None:
    """One line naming every departure from the trained sampler, or ``None``."""
    notes = departures(trained, setting)
    if not notes:
        return None
    return f"note: sampling {student} with " + ", ".join(notes) + "; it was aligned to the trained sampler"
