"""Trajectory diagnostics: how far a quantized student's sampling trajectory drifts from the FP
teacher's, step by step, and how straight each flow is.

For one batch of ``x_T`` and conditions and one time grid, per student order ``k``:

* ``distance_same[i]``: RMS distance at grid point ``i`` between the student's trajectory under
  the order-``k`` solver and the FP teacher's trajectory under the *same* solver. The paper's
  first claim: quantization noise hurts higher-order solvers more, so this grows with ``k``.
* ``distance_aligned[i]``: RMS distance to the FP trajectory under the solver the student was
  aligned to (``aligned_solver``, the teacher's higher-order solver in MOTA training). Its second
  claim: a MOTA student sampled at order 1 follows that trajectory; ``fp_distance_aligned`` (the
  FP model at order ``k`` against the same trajectory) is the baseline to beat.
* ``turning``: per step ``i``, ``1 - cos(eps_eff_i, eps_eff_{i+1})`` (per sample over the
  flattened tensor, averaged over the batch), and ``straightness = 1 - mean_i turning_i``.

Why that measures straightness: every solver step here is a first-order step with its effective
direction ``eps_eff`` (``saq_lightning.sampling``), and in DDIM's coordinates
``xbar = x / alpha``, ``sbar = sigma / alpha`` such a step is the straight segment
``xbar_t = xbar_s - (sbar_s - sbar_t) eps_eff``. The trajectory is therefore a polyline whose
``i``-th segment points along ``-eps_eff_i``; ``turning_i`` is the turning angle (as ``1 - cos``)
between consecutive segments. A straight flow (``straightness = 1``) is integrated exactly by a
first-order solver. Unlike a path-length/chord ratio it does not depend on the segment lengths,
which in these coordinates are dominated by the first, noisiest steps.

RMS distance: ``sqrt(mean((a - b)^2))`` per sample over all its elements (the state space of
the sampler: latents for latent models), averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from saq_lightning.sampling import Grid, make_solver, sample
from saq_lightning.sampling.predictor import NoisePredictor
from saq_lightning.sampling.schedules import NoiseSchedule


@dataclass
class OrderDiagnostics:
    """One student order ``k``; lists are indexed by grid point (distances, ``N + 1`` values) or by
    step boundary (turning, ``N - 1`` values)."""

    order: int
    distance_same: list[float]
    distance_aligned: list[float]
    fp_distance_aligned: list[float]
    turning_student: list[float]
    turning_fp: list[float]
    straightness_student: float
    straightness_fp: float


@dataclass
class TrajectoryDiagnostics:
    solver: str
    aligned_solver: str
    aligned_order: int | None
    times: list[float]
    num_samples: int
    orders: dict[int, OrderDiagnostics] = field(default_factory=dict)
    turning_aligned: list[float] = field(default_factory=list)
    straightness_aligned: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["orders"] = {str(k): v for k, v in d["orders"].items()}
        d["summary"] = self.summary()
        return d

    def summary(self) -> dict[str, float]:
        """Flat scalars: per order the final and mean distances and the straightness."""
        out: dict[str, float] = {"straightness_fp_aligned": self.straightness_aligned}
        for k, o in self.orders.items():
            out[f"order{k}/final_distance_same"] = o.distance_same[-1]
            out[f"order{k}/final_distance_aligned"] = o.distance_aligned[-1]
            out[f"order{k}/mean_distance_aligned"] = sum(o.distance_aligned) / len(o.distance_aligned)
            out[f"order{k}/fp_final_distance_aligned"] = o.fp_distance_aligned[-1]
            out[f"order{k}/straightness_student"] = o.straightness_student
            out[f"order{k}/straightness_fp"] = o.straightness_fp
        return out


def rms_distance(a: Tensor, b: Tensor) -> Tensor:
    """Per-grid-point RMS distance between two trajectories ``[N+1, B, ...]``, batch-averaged."""
    d = (a.double() - b.double()).flatten(2)
    return d.pow(2).mean(-1).sqrt().mean(-1)


def turning(eps_eff: Tensor) -> Tensor:
    """``1 - cos`` between consecutive effective directions ``eps_eff [N, B, ...]`` -> ``[N - 1]``."""
    e = eps_eff.double().flatten(2)
    if e.shape[0] < 2:
        return e.new_zeros(0)
    cos = torch.nn.functional.cosine_similarity(e[:-1], e[1:], dim=-1)
    return (1 - cos).mean(-1)


def straightness(eps_eff: Tensor) -> float:
    t = turning(eps_eff)
    return 1.0 if t.numel() == 0 else float(1 - t.mean())


@torch.no_grad()
def trajectory_diagnostics(
    teacher: NoisePredictor,
    student: NoisePredictor,
    x_T: Tensor,
    grid: Grid | Tensor | Sequence[float],
    schedule: NoiseSchedule,
    *,
    cond: Any = None,
    solver: str = "dpm3",
    orders: Sequence[int] = (1, 2, 3),
    aligned_solver: str = "dpm2",
    aligned_order: int | None = None,
) -> TrajectoryDiagnostics:
    """Diagnostics of ``student`` against ``teacher`` (samplers' noise predictors, guidance
    included) from the same ``x_T`` and ``cond`` on the same ``grid``.

    ``solver`` is a solver family that supports every order in ``orders`` (``dpm3``: singlestep
    DPM-Solver-1/2/3; ``dpm3m``; ``plms``); ``aligned_solver``/``aligned_order`` the teacher's
    solver the student was aligned to.
    """
    family = make_solver(solver, schedule)
    reference = sample(teacher, x_T, grid, make_solver(aligned_solver, schedule), cond=cond,
                       order=aligned_order, return_trajectory=True).trajectory
    diag = TrajectoryDiagnostics(
        solver, aligned_solver, aligned_order, [float(t) for t in reference.times], x_T.shape[0],
        turning_aligned=turning(reference.eps_eff).tolist(), straightness_aligned=straightness(reference.eps_eff),
    )
    for k in orders:
        fp = sample(teacher, x_T, grid, family, cond=cond, order=int(k), return_trajectory=True).trajectory
        st = sample(student, x_T, grid, family, cond=cond, order=int(k), return_trajectory=True).trajectory
        diag.orders[int(k)] = OrderDiagnostics(
            order=int(k),
            distance_same=rms_distance(st.states, fp.states).tolist(),
            distance_aligned=rms_distance(st.states, reference.states).tolist(),
            fp_distance_aligned=rms_distance(fp.states, reference.states).tolist(),
            turning_student=turning(st.eps_eff).tolist(),
            turning_fp=turning(fp.eps_eff).tolist(),
            straightness_student=straightness(st.eps_eff),
            straightness_fp=straightness(fp.eps_eff),
        )
    return diag


def log_to_tensorboard(diag: TrajectoryDiagnostics, writer, prefix: str = "trajectory",
                       global_step: int | None = None) -> None:
    """Write to a ``torch.utils.tensorboard.SummaryWriter`` (or anything with ``add_scalar``).

    ``global_step=None`` (a one-off diagnosis): the per-step curves, with the solver step as the
    TensorBoard step, plus the summary at step 0. Otherwise (during training): the summary at
    ``global_step``.
    """
    if global_step is None:
        for k, o in diag.orders.items():
            for i, (same, aligned, fp_al) in enumerate(zip(o.distance_same, o.distance_aligned, o.fp_distance_aligned)):
                writer.add_scalar(f"{prefix}/order{k}/distance_same", same, i)
                writer.add_scalar(f"{prefix}/order{k}/distance_aligned", aligned, i)
                writer.add_scalar(f"{prefix}/order{k}/fp_distance_aligned", fp_al, i)
            for i, (ts, tf) in enumerate(zip(o.turning_student, o.turning_fp)):
                writer.add_scalar(f"{prefix}/order{k}/turning_student", ts, i + 1)
                writer.add_scalar(f"{prefix}/order{k}/turning_fp", tf, i + 1)
    step = 0 if global_step is None else global_step
    for name, value in diag.summary().items():
        writer.add_scalar(f"{prefix}/{name}", value, step)


def save_diagnostics_plot(diag: TrajectoryDiagnostics, path, title: str = "") -> None:
    """PNG: distance to the same-solver FP trajectory, distance to the aligned FP trajectory
    (dashed: the FP model at the same order), and the per-step turning (dashed: FP)."""
    from .plots import PALETTE, Panel, Series, save_line_chart

    aligned = diag.aligned_solver + (f" order {diag.aligned_order}" if diag.aligned_order else "")
    same = Panel(f"RMS distance to FP, same solver ({diag.solver})", "grid point", "student vs FP")
    to_ref = Panel(f"RMS distance to FP {aligned}", "grid point", "solid: student, dashed: FP")
    turn = Panel("turning 1 - cos(eps_eff_i, eps_eff_i+1)", "step boundary", "solid: student, dashed: FP")
    for j, (k, o) in enumerate(sorted(diag.orders.items())):
        color = PALETTE[j % len(PALETTE)]
        same.series.append(Series(f"order {k}", o.distance_same, color=color))
        to_ref.series.append(Series(f"student order {k}", o.distance_aligned, color=color))
        to_ref.series.append(Series(f"FP order {k}", o.fp_distance_aligned, color=color, dashed=True))
        xs = list(range(1, len(o.turning_student) + 1))
        turn.series.append(Series(f"student order {k} (S={o.straightness_student:.3f})", o.turning_student, xs, color))
        turn.series.append(Series(f"FP order {k} (S={o.straightness_fp:.3f})", o.turning_fp, xs, color, dashed=True))
    save_line_chart([same, to_ref, turn], path, title or
                    f"trajectory diagnostics: {diag.num_samples} samples, {len(diag.times) - 1} steps")
