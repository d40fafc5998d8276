"""The sampler an SA-PTQ student is reconstructed for, and which pair role suits it.

SA-PTQ pairs a grid point ``x_{t_j}`` of the teacher's DPM-Solver-2 rollout with that step's
intermediate point ``x_{s_j}`` (``docs/quant.md``, "Which pair role for which sampler"). Which
block sees which point decides what the quantized model's direction *is*, and so which sampler it
is right for (derived, and checked on Gaussian data, in ``tests/test_ptq_pairing_analytic.py``):

* ``fp_second_order`` (quantized at ``x_{t_j}`` ~ FP at ``x_{s_j}``): one first-order step of the
  quantized model is the FP second-order step ("dual acceleration"); a solver that adds its own
  second-order correction on top (DPM-2, multistep, PLMS) doubles it and over-corrects.
* ``fp_first_order`` (quantized at ``x_{s_j}`` ~ FP at ``x_{t_j}``, the paper's equations): under
  singlestep DPM-2 the midpoint evaluation returns the grid point's FP direction, which cancels
  the correction (FP DPM-Solver-1 at twice the model calls); under a first-order sampler the
  quantized model is queried where it was not reconstructed and lags half a step.

So the PTQ config names its sampler (``ptq.solver``, ``ptq.order``, ``ptq.steps``,
``ptq.spacing``), the default role follows it (a first-order sampler: ``fp_second_order``), a
role that cancels or doubles the correction under it prints one line (the paper-literal reading
stays available), and ``student.ckpt`` records the sampler so that ``sample`` uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from saq_lightning.data.mixstep import MixStepPhase
from saq_lightning.sampling.registry import model_calls_per_step, solver_order


@dataclass(frozen=True)
class PTQSampler:
    """A resolved sampler: ``order`` is the effective order, ``order_override`` what the solver name
    does not fix (``None``: the name's own order)."""

    solver: str
    order: int
    order_override: int | None
    steps: int
    spacing: str
    guidance_scale: float

    @property
    def multistep(self) -> bool:
        """One model call per step at order >= 2: it reuses earlier grid evaluations."""
        return self.order >= 2 and model_calls_per_step(self.solver, self.order) == 1

    def label(self) -> str:
        order = f" order {self.order_override}" if self.order_override is not None else ""
        return f"{self.solver}{order}@{self.steps} ({self.spacing}, cfg {self.guidance_scale:g})"

    def record(self) -> dict[str, Any]:
        """What ``student.ckpt`` keeps (``checkpoint["ptq"]["sampler"]``)."""
        return asdict(self)


def resolve_sampler(solver: str, order: int | None, steps: int | None, spacing: str | None,
                    run_spacing: str, guidance_scale: float,
                    phases: Sequence[MixStepPhase] | None) -> PTQSampler:
    """The sampler of a ``ptq:`` block in a run (``steps=None``: the fewest student steps among the
    shards' phases; ``spacing=None``: the run's, the only one its calibration pairs come from).

    Raises:
        ValueError: a spacing other than the run's, or no steps and no phases to take them from.
    """
    if spacing is not None and spacing != run_spacing:
        raise ValueError(f"ptq.spacing {spacing!r}: the calibration pairs come from the run's "
                         f"{run_spacing!r} grids (model.init_args.spacing); a student reconstructed on "
                         f"them is for {run_spacing!r}. Generate pairs on {spacing!r} or drop ptq.spacing")
    if steps is None:
        if not phases:
            raise ValueError("ptq.steps is not set and the shards record no phases: name the steps "
                             "the student will be sampled with (ptq.steps)")
        steps = min(int(p.student_steps) for p in phases)
    effective = int(order) if order is not None else solver_order(solver)
    override = None if order is None or int(order) == solver_order(solver) else int(order)
    return PTQSampler(str(solver), effective, override, int(steps), run_spacing, float(guidance_scale))


def default_role(sampler: PTQSampler) -> str:
    """``fp_second_order`` for a first-order sampler (dual acceleration); ``fp_first_order``
    otherwise (no role reproduces FP second order under a second-order sampler; this one at least
    reconstructs the quantized model at the intermediate points a singlestep solver queries)."""
    return "fp_second_order" if sampler.order == 1 else "fp_first_order"


def role_note(objective: str, role: str, points: str, sampler: PTQSampler) -> str | None:
    """One line when the reconstruction does not suit ``sampler``, or ``None``."""
    where = f"ptq: the student is for {sampler.label()}"
    if objective == "same_input":
        if points == "grid" and sampler.order >= 2 and not sampler.multistep:
            return (f"{where}, which also queries intermediate points; same_input_points: grid "
                    f"reconstructs the quantized model at grid points only (the control for it is "
                    f"same_input_points: grid_and_intermediate)")
        return None
    if role == "fp_second_order" and sampler.order >= 2:
        return (f"{where}; pair_roles fp_second_order doubles the second-order correction under it: "
                f"the quantized model already returns the FP direction at the intermediate point and "
                f"the solver adds its own correction (it over-corrects); fp_second_order is for a "
                f"first-order sampler (dpm1)")
    if role == "fp_first_order" and sampler.order == 1:
        return (f"{where}; pair_roles fp_first_order lags half a step under it: the quantized model "
                f"is reconstructed at intermediate points, which a first-order sampler never "
                f"queries (fp_second_order makes a first-order step follow FP second order)")
    if role == "fp_first_order" and sampler.multistep:
        return (f"{where}; pair_roles fp_first_order reconstructs the quantized model at "
                f"intermediate points, which a multistep solver never queries")
    if role == "fp_first_order":
        return (f"{where}; pair_roles fp_first_order cancels the second-order correction under it: "
                f"the quantized model at the intermediate point returns the FP direction of the grid "
                f"point, so each step is FP DPM-Solver-1's at {sampler.order}x the model calls "
                f"(the paper-literal pairing; no role reproduces FP second order under this sampler)")
    return None
