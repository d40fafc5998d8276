"""``eps_eff_at_points``: one solver step at a batch of independent trajectory points, with history.

Training batches mix points from different steps of different trajectories. A singlestep solver's
step is a pure function of the point (``step_with_direction`` does it). A multistep solver also
needs the model's evaluations at the previous grid points; here they are *recomputed* by
``model`` at the stored previous states ``history_x`` (so the same call serves the frozen teacher
and, differentiably, a student whose own history is its evaluations at those points).

Rows are grouped by ``(order, number of history entries used)``, each group is one checked
``step_with_direction`` call with a history that is valid for every row in it (no padding
reaches the arithmetic, so no NaN can leak into a gradient), and the groups are put back in row
order. A row uses ``min(order - 1, available)`` entries, where ``available`` is how many previous
grid points its trajectory has (its step index): exactly what a sampling loop's warm-up does
(PLMS's first step, with none, is its pseudo improved Euler step).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .direction import step_with_direction
from .predictor import Evaluation, NoisePredictor, select_batch
from .solver import Solver


def eps_eff_at_points(
    model: NoisePredictor,
    solver: Solver,
    x_s: Tensor,
    s: Tensor,
    t: Tensor,
    order: Tensor,
    cond: Any = None,
    *,
    history_x: Tensor | None = None,
    history_t: Tensor | None = None,
    available: Tensor | None = None,
    eps_s: Tensor | None = None,
) -> Tensor:
    """``eps_eff`` ``[B, ...]`` of one ``solver`` step ``s -> t`` of per-row ``order`` at every row.

    Args:
        model: noise predictor; evaluated at ``x_s``, the solver's own intermediate points
            (singlestep) and the history points (multistep). Gradients flow if enabled.
        solver: any :class:`~saq_lightning.sampling.Solver`.
        x_s, s, t: points ``[B, ...]`` and their step times ``[B]``.
        order: ``[B]`` integer orders (already capped as the sampling loop would, e.g. warm-up).
        history_x: multistep only: ``[B, H, ...]`` states at the previous grid points, most
            recent first (``history_x[:, 0]`` is the point one step back).
        history_t: ``[B, H]`` their times.
        available: ``[B]`` how many of the ``H`` entries are real (the rest may hold anything);
            default all ``H``.
        eps_s: ``[B, ...]`` the model's prediction at ``(x_s, s)`` if already known (one call fewer).
    """
    b = x_s.shape[0]
    order = order.to(device=x_s.device, dtype=torch.long).reshape(b)
    if not solver.history_size:
        return step_with_direction(model, x_s, s, t, solver, order=order, cond=cond, eps_s=eps_s).eps_eff
    h = 0 if history_x is None else int(history_x.shape[1])
    avail = (torch.full((b,), h, dtype=torch.long, device=x_s.device) if available is None
             else available.to(device=x_s.device, dtype=torch.long).reshape(b).clamp(0, h))
    used = torch.minimum(order - 1, avail)
    lacking = torch.nonzero(solver_needs(solver, order) > used).flatten()
    if lacking.numel():
        i = int(lacking[0])
        raise ValueError(f"row {i}: {solver.name} of order {int(order[i])} needs "
                         f"{int(solver_needs(solver, order)[i])} previous evaluations, the point "
                         f"has {int(avail[i])} (history_x holds {h})")
    keys = order * (h + 1) + used
    groups = torch.unique(keys).tolist()
    out = None
    for key in groups:
        k, n = divmod(int(key), h + 1)
        rows = torch.nonzero(keys == key).flatten()
        whole = len(groups) == 1
        xr = x_s if whole else x_s[rows]
        sr, tr = (s, t) if whole else (s[rows], t[rows])
        cr = cond if whole else select_batch(cond, rows, b)
        history = []
        for j in reversed(range(n)):  # oldest first
            hx = history_x[:, j] if whole else history_x[rows, j]
            ht = history_t[:, j] if whole else history_t[rows, j]
            hx = hx.to(x_s.dtype)
            history.append(Evaluation(hx, ht, model(hx, ht.to(s.dtype), cr)))
        er = eps_s if whole or eps_s is None else eps_s[rows]
        eps = step_with_direction(model, xr, sr, tr, solver, order=k, cond=cr,
                                  history=tuple(history), eps_s=er).eps_eff
        if whole:
            return eps
        out = torch.zeros_like(x_s, dtype=eps.dtype) if out is None else out
        out = out.index_copy(0, rows, eps)
    return out


def solver_needs(solver: Solver, order: Tensor) -> Tensor:
    """Per row, the fewest history entries ``solver`` must have at ``order`` (PLMS: 0 at order 2)."""
    return torch.tensor([solver.history_needed(int(k)) for k in order.tolist()],
                        dtype=torch.long, device=order.device)
