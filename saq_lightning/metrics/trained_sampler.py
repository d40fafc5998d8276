"""The sampler a trained student was aligned to, read from its training checkpoint.

A student is trained for one sampler: its mixstep phases' student order and step counts, the run's
solver family, spacing and guidance scale (``docs/training.md``, "Sampling a trained student").
``sample`` takes its defaults from here, so that ``sample --student last.ckpt`` samples the student
as it was trained; an explicit option that departs from it prints one line saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from saq_lightning.files import load_tensors

#: solver name of the student's first-order (or k-th order) step, by the run's solver family
_SOLVERS = {"dpm": {1: "dpm1", 2: "dpm2", 3: "dpm3"}, "dpm++": {1: "dpm++1", 2: "dpm++2s", 3: "dpm++3s"}}


def trained_sampler(student: str | None) -> dict[str, Any]:
    """``{solver, student_order, steps, spacing, guidance_scale, trained_steps}`` of a ``.ckpt`` student
    (``{}`` for the FP model, a naive student or an export folder, which record no training)."""
    if not student or not str(student).endswith(".ckpt") or not Path(student).is_file():
        return {}
    checkpoint = load_tensors(student)
    hparams = checkpoint.get("hyper_parameters") or {}
    phases = _phases(checkpoint.get("callbacks") or {})
    out: dict[str, Any] = {}
    if "guidance_scale" in hparams:
        out["guidance_scale"] = float(hparams["guidance_scale"])
    if "spacing" in hparams:
        out["spacing"] = str(hparams["spacing"])
    if phases:
        order = int(phases[0]["student_order"])
        family = _SOLVERS.get(str(hparams.get("teacher_solver", "dpm")), _SOLVERS["dpm"])
        if order in family:
            out["solver"] = family[order]
        out["student_order"] = order
        out["steps"] = int(phases[0]["student_steps"])
        out["trained_steps"] = sorted({int(p["student_steps"]) for p in phases})
    return out


def _phases(callbacks: Mapping[str, Any]) -> list[dict[str, Any]]:
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
    if setting.order is not None and setting.order != trained.get("student_order", setting.order):
        notes.append(f"order {setting.order} (trained: {trained['student_order']})")
    return notes


def departure_line(trained: Mapping[str, Any], setting: Any, student: str) -> str | None:
    """One line naming every departure from the trained sampler, or ``None``."""
    notes = departures(trained, setting)
    if not notes:
        return None
    return f"note: sampling {student} with " + ", ".join(notes) + "; it was aligned to the trained sampler"
