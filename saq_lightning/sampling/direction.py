"""``step_with_direction``: one checked solver step at arbitrary per-sample points, with ``eps_eff``.

The effective first-order direction of a step ``s -> t`` that lands on ``x_t`` is

    eps_eff = ((alpha_t / alpha_s) x_s - x_t) / (sigma_t (e^h - 1)),   h = lambda_t - lambda_s

(at ``t = 0``, ``sigma_t (e^h - 1)`` is read as its limit ``alpha_t sigma_s / alpha_s``), so a
first-order step with ``eps_eff`` lands exactly on the k-th order result. Singlestep solvers
(DDIM, DPM-Solver-k, DPM-Solver++(kS)) make it a pure function of ``(x_s, s, t, order, cond)``;
multistep ones (DPM-Solver-kM, PLMS) also need the ``order - 1`` previous evaluations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .errors import GridError, SolverConfigError
from .predictor import Evaluation, NoisePredictor, batch_times
from .schedules import compute_dtype
from .solver import Orders, Solver, StepOutput, StepState


def step_with_direction(
    model: NoisePredictor,
    x_s: Tensor,
    s: Tensor | float,
    t: Tensor | float,
    solver: Solver,
    *,
    order: int | Tensor | None = None,
    cond: Any = None,
    history: Sequence[Evaluation] = (),
    eps_s: Tensor | None = None,
    inner: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> StepOutput:
    """One step of ``solver`` from ``(x_s, s)`` to ``t`` for every sample; returns ``x_t`` and ``eps_eff``.

    Args:
        model: noise predictor ``model(x, t, cond) -> eps``; it is called with the continuous
            time of every evaluation (``[b]``, possibly a sub-batch).
        x_s: states ``[B, ...]``.
        s, t: start and end times, scalars or ``[B]`` (may differ per sample); ``t`` must be less
            noisy than ``s`` for every sample, ``s`` in ``(0, 1]``, ``t`` in ``[0, 1)``.
        solver: a :class:`Solver` (its ``schedule`` gives alpha, sigma, lambda).
        order: an int or a ``[B]`` integer tensor of per-sample orders (default ``solver.order``).
            DPM-Solver steps that end at ``t = 0`` are first order (their coefficients are
            undefined at ``lambda = inf``; ``Solver.step_orders``); ``StepOutput.order`` reports
            what was used.
        cond: condition passed through to the model (rows are selected for sub-batches).
        history: multistep solvers only: previous evaluations ``Evaluation(x, t, eps)``
            (full batch, oldest first); an order-k sample uses the last ``k - 1``. Rows of
            samples that do not use an entry may hold anything finite or NaN. PLMS assumes the
            previous points are one (equal) step apart.
        eps_s: the model's prediction at ``(x_s, s)`` if already known (saves one call).
        inner: singlestep DPM-Solver only: explicit intermediate times ``[B, 2]`` instead of
            the solver's ``lambda``-fractions.
        generator: random source for stochastic solvers (DDIM with ``eta > 0``).
    """
    if not isinstance(solver, Solver):
        raise TypeError(f"solver must be a Solver (see make_solver), got {type(solver).__name__}")
    if not isinstance(x_s, Tensor) or x_s.ndim < 1:
        raise TypeError(f"x_s must be a batched tensor [B, ...], got {type(x_s).__name__}")
    b = x_s.shape[0]
    s_b = batch_times(s, b, x_s, "s")
    t_b = batch_times(t, b, x_s, "t")
    _check_times(solver, s_b, t_b)
    orders = solver.step_orders(Orders.from_arg(solver.order if order is None else order, b, x_s.device,
                                                solver.allowed_orders, solver.name), t_b)
    checked = []
    for i, ev in enumerate(tuple(history)[-solver.history_size:] if solver.history_size else ()):
        if not isinstance(ev, Evaluation):
            raise TypeError(f"history[{i}] must be an Evaluation(x, t, eps), got {type(ev).__name__}")
        if ev.x.shape != x_s.shape or ev.eps.shape != x_s.shape:
            raise SolverConfigError(
                f"history entries must hold full-batch x and eps of shape {tuple(x_s.shape)}, "
                f"got x {tuple(ev.x.shape)}, eps {tuple(ev.eps.shape)}"
            )
        checked.append(Evaluation(ev.x, batch_times(ev.t, b, x_s, "history t"), ev.eps))
    if eps_s is not None and eps_s.shape != x_s.shape:
        raise SolverConfigError(f"eps_s must have the shape of x_s {tuple(x_s.shape)}, got {tuple(eps_s.shape)}")
    if inner is not None:
        inner = torch.as_tensor(inner).to(dtype=compute_dtype(x_s.dtype)).to(device=x_s.device)
        if inner.shape != (b, 2):
            raise GridError(f"inner must have shape [B, 2] = [{b}, 2], got {tuple(inner.shape)}")
    return solver.step(StepState(model, x_s, s_b, t_b, orders, cond, eps_s, tuple(checked), inner,
                                 generator))


def _check_times(solver: Solver, s: Tensor, t: Tensor) -> None:
    if bool((s <= 0).any()) or bool((s > 1).any()):
        raise GridError(f"s must lie in (0, 1] for every sample, got min {s.min().item():.6g}, max {s.max().item():.6g}")
    if bool((t < 0).any()) or bool((t >= 1).any()):
        raise GridError(f"t must lie in [0, 1) for every sample, got min {t.min().item():.6g}, max {t.max().item():.6g}")
    lam_s, lam_t = solver.schedule.lambda_(s), solver.schedule.lambda_(t)
    bad = torch.nonzero(lam_t <= lam_s).flatten()
    if bad.numel():
        i = int(bad[0])
        raise GridError(
            f"t must be less noisy than s (lambda_t > lambda_s) for every sample, got s={s[i].item():.6g}, "
            f"t={t[i].item():.6g} at batch row {i}"
        )
