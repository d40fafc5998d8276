"""Time grids: the outer grid of a sampler and the intermediate points of singlestep solvers.

A grid is a 1-D tensor of continuous times ``t_0 > t_1 > ... > t_N`` (strictly decreasing in
noise, i.e. increasing in ``lambda``), ``t`` in ``[0, 1]``; only the last point may be ``0``
(``alpha = 1``, ``sigma = 0``). Grids are float64 CPU tensors (host-side constants); samplers cast
them to the sample's device and dtype.

Spacings (``time_grid``):

* ``"time_uniform"``: uniform in ``t`` (DPM-Solver's ``time_uniform``);
* ``"logSNR"``: uniform in ``lambda`` (DPM-Solver's ``logSNR``, its recommendation for
  singlestep solvers);
* ``"time_quadratic"``: uniform in ``sqrt(t)`` (DPM-Solver's ``time_quadratic``);
* ``"leading"``: DDIM/LDM/PLMS integer spacing, model timesteps
  ``k * (N_train // steps) + steps_offset``, ``k = steps-1 .. 0``, then a final point.

Defaults: ``t_start = 1`` (model timestep ``N - 1``); ``t_end = 1/N`` (model timestep 0, as
DPM-Solver does for discrete models) except for ``"leading"``, whose final point defaults to
``t = 0`` (diffusers' DDIM ``set_alpha_to_one=True``; PNDM's default ``False`` is ``t_end = 1/N``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .errors import GridError
from .schedules import NoiseSchedule

SPACINGS = ("time_uniform", "logSNR", "time_quadratic", "leading")


def _f64(t: Tensor | Sequence[float]) -> Tensor:
    return torch.as_tensor(t).detach().to(dtype=torch.float64, device="cpu")


def validate_grid(t: Tensor, name: str = "grid") -> Tensor:
    """``t`` as a float64 CPU tensor, or a :class:`GridError` saying what is wrong with it."""
    t = _f64(t)
    if t.ndim != 1 or t.numel() < 2:
        raise GridError(f"{name} must be a 1-D tensor of at least 2 times (1 step), got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise GridError(f"{name} must be finite, got {t.tolist()}")
    if bool((t < 0).any()) or bool((t > 1).any()):
        raise GridError(f"{name} times must lie in [0, 1], got min {t.min().item():.6g}, max {t.max().item():.6g}")
    bad = torch.nonzero(t[1:] >= t[:-1]).flatten()
    if bad.numel():
        i = int(bad[0])
        raise GridError(
            f"{name} must be strictly decreasing in noise (t[i+1] < t[i]), got t[{i}]={t[i].item():.6g}, "
            f"t[{i + 1}]={t[i + 1].item():.6g}"
        )
    return t


@dataclass(frozen=True)
class Grid:
    """An outer grid with, optionally, a fixed per-step order schedule and explicit inner points.

    ``orders[i]`` is the order of step ``i``; ``inner[i, :orders[i]-1]`` its intermediate times
    (NaN where unused). Used to reproduce diffusers' singlestep schedules; a grid with ``orders``
    fixes the order of every sample.
    """

    t: Tensor
    orders: tuple[int, ...] | None = None
    inner: Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "t", validate_grid(self.t))
        n = self.steps
        if self.orders is not None:
            orders = tuple(int(k) for k in self.orders)
            if len(orders) != n or any(k not in (1, 2, 3) for k in orders):
                raise GridError(f"grid orders must be {n} values in (1, 2, 3), got {self.orders!r}")
            object.__setattr__(self, "orders", orders)
        if self.inner is not None:
            if self.orders is None:
                raise GridError("a grid with inner times needs orders as well")
            inner = _f64(self.inner)
            if inner.shape != (n, 2):
                raise GridError(f"grid inner must have shape [steps, 2] = [{n}, 2], got {tuple(inner.shape)}")
            for i, k in enumerate(self.orders):
                pts = inner[i, : k - 1]
                chain = torch.cat([self.t[i : i + 1], pts, self.t[i + 1 : i + 2]])
                if not bool(torch.isfinite(pts).all()) or bool((chain[1:] >= chain[:-1]).any()):
                    raise GridError(
                        f"grid inner times of step {i} (order {k}) must lie strictly between "
                        f"t[{i}]={self.t[i].item():.6g} and t[{i + 1}]={self.t[i + 1].item():.6g}, "
                        f"decreasing, got {pts.tolist()}"
                    )
            object.__setattr__(self, "inner", inner)

    @property
    def steps(self) -> int:
        return self.t.numel() - 1


def as_grid(grid: Grid | Tensor | Sequence[float]) -> Grid:
    return grid if isinstance(grid, Grid) else Grid(_f64(grid))


def time_grid(
    schedule: NoiseSchedule,
    steps: int,
    spacing: str = "logSNR",
    *,
    t_start: float = 1.0,
    t_end: float | None = None,
    steps_offset: int = 0,
) -> Tensor:
    """The outer grid ``[steps + 1]`` (float64, CPU) from ``t_start`` down to ``t_end``."""
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise GridError(f"steps must be an integer >= 1, got {steps!r}")
    steps = int(steps)
    if spacing not in SPACINGS:
        raise GridError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    n_train = getattr(schedule, "num_train_timesteps", None)
    if spacing == "leading":
        if n_train is None:
            raise GridError("spacing='leading' needs a DiscreteSchedule (integer training timesteps)")
        if steps > n_train:
            raise GridError(f"steps must be <= num_train_timesteps={n_train} for 'leading' spacing, got {steps}")
        ratio = n_train // steps
        ts = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * ratio + steps_offset
        end = 0.0 if t_end is None else float(t_end)
        return validate_grid(torch.cat([(ts + 1.0) / n_train, torch.tensor([end], dtype=torch.float64)]))
    if t_end is None:
        t_end = 1.0 / n_train if n_train else 1e-3
    if not 0.0 <= t_end < t_start <= 1.0:
        raise GridError(f"need 0 <= t_end < t_start <= 1, got t_start={t_start!r}, t_end={t_end!r}")
    if spacing == "time_uniform":
        t = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)
    elif spacing == "time_quadratic":
        t = torch.linspace(math.sqrt(t_start), math.sqrt(t_end), steps + 1, dtype=torch.float64) ** 2
    else:
        if t_end <= 0.0:
            raise GridError("t_end must be > 0 for spacing='logSNR' (lambda is infinite at t = 0)")
        lam = schedule.lambda_(torch.tensor([t_start, t_end], dtype=torch.float64))
        t = schedule.t_from_lambda(torch.linspace(float(lam[0]), float(lam[1]), steps + 1, dtype=torch.float64))
        t[0], t[-1] = t_start, t_end  # exact end points
    return validate_grid(t)


#: how singlestep intermediate points follow each spacing (DPM-Solver's rule: the outer spacing
#: inside each step); ``leading`` (DDIM's integer spacing) is uniform in time
SPACING_COORDINATE = {"time_uniform": "t", "leading": "t", "time_quadratic": "sqrt_t", "logSNR": "lambda"}


def spacing_points(schedule: NoiseSchedule, s: Tensor, t: Tensor, spacing: str,
                   fractions: Sequence[float]) -> Tensor:
    """Times at fractions ``f`` of the step ``s -> t`` in the coordinate that ``spacing`` is
    uniform in (``t``, ``sqrt(t)`` or ``lambda``): ``[..., len(fractions)]``.

    With ``fractions = (1/k, ..., (k-1)/k)`` these are the intermediate points of a k-th order
    singlestep step placed as DPM-Solver's reference implementation places them: the step
    ``s -> t`` divided into ``k`` sub-steps by the outer grid's own spacing rule.
    """
    if spacing not in SPACING_COORDINATE:
        raise GridError(f"spacing must be one of {tuple(SPACING_COORDINATE)}, got {spacing!r}")
    s, t = torch.as_tensor(s), torch.as_tensor(t)
    coord = SPACING_COORDINATE[spacing]
    if coord == "lambda":
        return intermediate_times(schedule, s, t, fractions)
    f = torch.as_tensor(list(fractions), dtype=s.dtype, device=s.device)
    if coord == "t":
        return s.unsqueeze(-1) + f * (t - s).unsqueeze(-1)
    a, b = s.sqrt().unsqueeze(-1), t.sqrt().unsqueeze(-1)
    return (a + f * (b - a)) ** 2


def recognise_spacing(schedule: NoiseSchedule, grid: Tensor, rtol: float = 1e-7) -> str | None:
    """The spacing a grid was made with (uniform in ``t``, ``sqrt(t)`` or ``lambda``), or ``None``.

    A final point at ``t = 0`` is ignored (its step is first order). A grid of one step fits every
    rule and is not recognised.
    """
    t = _f64(grid)
    if t[-1] == 0:
        t = t[:-1]
    if t.numel() < 3:
        return None
    for spacing, c in (("time_uniform", t), ("time_quadratic", t.sqrt()),
                       ("logSNR", schedule.lambda_(t))):
        d = c[1:] - c[:-1]
        if bool(torch.isfinite(d).all()) and float((d - d.mean()).abs().max()) <= rtol * float(d.abs().mean()):
            return spacing
    return None


def intermediate_times(
    schedule: NoiseSchedule, s: Tensor, t: Tensor, fractions: Sequence[float]
) -> Tensor:
    """Times at ``lambda_s + r (lambda_t - lambda_s)`` for each ``r`` in ``fractions``: ``[..., len(fractions)]``."""
    s, t = torch.as_tensor(s), torch.as_tensor(t)
    ls, lt = schedule.lambda_(s), schedule.lambda_(t)
    if not bool(torch.isfinite(lt).all()):
        raise GridError("intermediate points need t > 0 (lambda is infinite at t = 0)")
    r = torch.as_tensor(list(fractions), dtype=ls.dtype, device=ls.device)
    return schedule.t_from_lambda(ls.unsqueeze(-1) + r * (lt - ls).unsqueeze(-1))


def solver_grid(
    schedule: NoiseSchedule,
    steps: int,
    order: int,
    spacing: str = "logSNR",
    *,
    fractions: Sequence[float] | None = None,
    **grid_kwargs: float,
) -> Grid:
    """Outer grid of ``steps`` steps and the intermediate points of a singlestep solver of ``order``.

    Intermediate points follow DPM-Solver's reference rule by default: the outer ``spacing`` rule
    inside each step (:func:`spacing_points`; on ``logSNR`` grids the lambda-fractions 1/2 and
    1/3, 2/3). ``fractions`` places them at those lambda-fractions instead. A last step ending at
    ``t = 0`` has no intermediate points and order 1. For the SA-PTQ pairing (first-order
    trajectory point ``t_j`` with the second-order intermediate point ``s_j``) use ``order=2``:
    ``grid.t[j]`` and ``grid.inner[j, 0]``.
    """
    if order not in (1, 2, 3):
        raise GridError(f"order must be in (1, 2, 3), got {order!r}")
    if fractions is not None and len(fractions) != order - 1:
        raise GridError(f"fractions must hold order - 1 = {order - 1} values, got {tuple(fractions)!r}")
    t = time_grid(schedule, steps, spacing, **grid_kwargs)
    inner = torch.full((steps, 2), float("nan"), dtype=torch.float64)
    orders = [order] * steps
    last = steps if t[-1] > 0 else steps - 1
    if last < steps:
        orders[-1] = 1
    if order > 1 and last > 0:
        s_, t_ = t[:last], t[1 : last + 1]
        if fractions is None:
            even = [j / order for j in range(1, order)]
            inner[:last, : order - 1] = spacing_points(schedule, s_, t_, spacing, even)
        else:
            inner[:last, : order - 1] = intermediate_times(schedule, s_, t_, fractions)
    return Grid(t, tuple(orders), inner)


def grid_from_timesteps(
    timesteps: Tensor | Sequence[int], num_train_timesteps: int, final: str | float = "zero"
) -> Tensor:
    """Continuous grid of a diffusers timestep list (decreasing model timesteps) plus its end point.

    ``t = (timestep + 1) / N``. ``final``: ``"zero"`` (``t = 0``: diffusers' ``final_sigmas_type="zero"``,
    DDIM ``set_alpha_to_one=True``), ``"sigma_min"`` (``t = 1/N``: ``final_sigmas_type="sigma_min"``,
    ``set_alpha_to_one=False``) or an explicit time.
    """
    ts = _f64(timesteps)
    if final == "zero":
        end = 0.0
    elif final == "sigma_min":
        end = 1.0 / num_train_timesteps
    elif isinstance(final, (int, float)) and not isinstance(final, bool):
        end = float(final)
    else:
        raise GridError(f"final must be 'zero', 'sigma_min' or a time in [0, 1), got {final!r}")
    return validate_grid(torch.cat([(ts + 1.0) / num_train_timesteps, torch.tensor([end], dtype=torch.float64)]))


def singlestep_grid_from_timesteps(
    timesteps: Tensor | Sequence[int],
    order_list: Sequence[int],
    num_train_timesteps: int,
    final: str | float = "zero",
) -> Grid:
    """A :class:`Grid` for diffusers' ``DPMSolverSinglestepScheduler`` (its ``timesteps``, ``order_list``).

    diffusers counts model calls: a run ``1, 2, ..., k`` of ``order_list`` is one k-th order step
    whose intermediate points are the grid points inside the run.
    """
    full = grid_from_timesteps(timesteps, num_train_timesteps, final)
    orders = [int(k) for k in order_list]
    if len(orders) != full.numel() - 1:
        raise GridError(f"order_list must have one entry per timestep ({full.numel() - 1}), got {len(orders)}")
    outer, step_orders, inner_rows = [full[0].item()], [], []
    i = 0
    while i < len(orders):
        k = 1
        while i + k < len(orders) and orders[i + k] == k + 1:
            k += 1
        if orders[i] != 1 or k > 3:
            raise GridError(f"order_list must be runs of 1, 2[, 3], got {orders!r}")
        row = [float("nan"), float("nan")]
        for j in range(1, k):
            row[j - 1] = full[i + j].item()
        inner_rows.append(row)
        step_orders.append(k)
        outer.append(full[i + k].item())
        i += k
    return Grid(torch.tensor(outer, dtype=torch.float64), tuple(step_orders),
                torch.tensor(inner_rows, dtype=torch.float64))
