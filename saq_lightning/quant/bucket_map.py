"""The explicit timestep-bucket map of a student: which activation bucket serves which grid step.

A student trained on the grids ``(spacing, steps)`` of its mixstep phases evaluates its network at
the grid points ``t_0 > ... > t_{steps-1}`` (the last grid point is never evaluated by a
first-order step). :class:`BucketMap` holds, for each such *student grid*, the table
``step i -> bucket b(i)``, and for lookups the union of all grid points (model timesteps on the
``0..N-1`` training scale) with their buckets.

Why explicit: keying buckets by ``floor(timestep * n_buckets / N)`` shares buckets silently on
``time_quadratic`` and ``logSNR`` grids (100 steps -> 77 and 71 distinct buckets), and a float32
round trip moves integer timesteps across bucket edges. Here buckets are assigned once from the
grids, every grid is checked, and lookups match grid points, not bucket edges.

Assignment rule (:meth:`BucketMap.from_grids`), with ``U`` the number of distinct evaluated
timesteps over all grids (points within ``tolerance`` of each other are one point: nested grids
share their buckets exactly) ranked ``r = 0..U-1`` from the noisiest:

* ``U <= n_buckets``: ``bucket = n_buckets - 1 - floor(r * n_buckets / U)`` -- every distinct
  point its own bucket. On ``time_uniform`` 100/50/20/10 with 100 buckets this is exactly the old
  value rule (step ``i`` of the 100-step grid -> bucket ``99 - i``).
* ``U > n_buckets``: the grid with most steps (the *anchor*) gets the rule above on its own
  points; every other point takes the bucket of the nearest anchor point.

Then every grid is checked: distinct steps of one grid must get distinct buckets, otherwise a
:class:`BucketCollisionError` names the phase, the spacing and the colliding steps.

**Intermediate points** (``StudentGrid.intermediate``): a grid whose quantized model is also
evaluated between its grid points (a solver-aware phase's singlestep student, SA-PTQ pairs whose
quantized side sits at the DPM-Solver-2 intermediate points) lists those model timesteps too. They
get buckets of their own *after* the grid points are assigned (so the grid tables are those of the
same grids without intermediate points): each distinct intermediate point that is not a grid
point takes a bucket no grid point uses, in noise order (noisier points, higher buckets), and the
check refuses a grid whose intermediate points cannot all get an unused bucket. An intermediate
point that coincides with a grid point (nested grids: a 10-step DPM-2 midpoint on a time-uniform
grid is a 20-step grid point) is that point and shares its bucket. :meth:`BucketMap.same_as`
compares the grid tables only: a map recorded before intermediate points had buckets, or a run that
does not evaluate them, keeps the same grid buckets.

Lookups (:meth:`BucketMap.lookup`): a timestep within ``tolerance`` of a trained point (grid or
intermediate) gets that point's bucket. Any other timestep (a step count or spacing the student was not trained for, a
singlestep solver's intermediate point) gets the bucket of the **nearest trained point** (in
model-timestep value); the map says so once (a logged warning), not at every call.

A map without grids (:meth:`BucketMap.uniform`, the default of a student that was never bound
to a schedule) uses the value rule ``floor(timestep * n_buckets / N)`` on timesteps rounded to
the nearest integer when within ``tolerance`` of one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from saq_lightning.errors import UserError

log = logging.getLogger(__name__)

FORMAT = "saq_lightning/bucket-map/1"
#: model-timestep distance under which two grid points are the same point (float32 round trips
#: of 0..999 err by < 1e-4; the closest distinct points of a 100-step logSNR grid are 0.2 apart)
TOLERANCE = 1e-3


class BucketCollisionError(UserError, ValueError):
    """Two distinct steps of one student grid would share an activation bucket."""


@dataclass(frozen=True)
class StudentGrid:
    """One student grid: its name (e.g. ``phase 0``), spacing, step count and evaluated model
    timesteps ``[steps]`` (noisiest first), and the intermediate model timesteps its steps also
    evaluate (``()``: none; see the module docstring)."""

    name: str
    spacing: str
    steps: int
    timesteps: tuple[float, ...]
    intermediate: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.timesteps) != self.steps:
            raise ValueError(f"{self.name}: {self.steps} steps need {self.steps} timesteps, got "
                             f"{len(self.timesteps)}")


@dataclass
class BucketMap:
    """Step-to-bucket tables of a student's grids; see the module docstring for the rules.

    API: :meth:`from_grids` / :meth:`uniform` build one; :meth:`table` gives ``b(i)`` of a grid;
    :meth:`lookup` maps model timesteps ``[B]`` to buckets ``[B]`` (long, on the timesteps'
    device); :meth:`to_dict` / :meth:`from_dict` make it part of checkpoints and exports.
    """

    n_buckets: int
    num_train_timesteps: int
    grids: tuple[StudentGrid, ...] = ()
    tables: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tolerance: float = TOLERANCE
    intermediate_tables: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _keys: dict[torch.device, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False,
                                                             compare=False)
    _warned: bool = field(default=False, repr=False, compare=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(cls, n_buckets: int, num_train_timesteps: int = 1000) -> BucketMap:
        """The grid-free value rule (a student not bound to any grid)."""
        if n_buckets < 1 or num_train_timesteps < 1:
            raise ValueError("n_buckets and num_train_timesteps must be >= 1")
        return cls(int(n_buckets), int(num_train_timesteps))

    @classmethod
    def from_grids(
        cls,
        grids: Sequence[StudentGrid],
        n_buckets: int,
        num_train_timesteps: int = 1000,
        tolerance: float = TOLERANCE,
    ) -> BucketMap:
        """Assign buckets to the points of ``grids`` and check every grid (raises
        :class:`BucketCollisionError`)."""
        if not grids:
            raise ValueError("BucketMap.from_grids needs at least one grid (use uniform())")
        grids = tuple(grids)
        points = _distinct(sorted({t for g in grids for t in g.timesteps}, reverse=True), tolerance)
        if len(points) <= n_buckets:
            bucket_of = dict(zip(points, _rank_buckets(len(points), n_buckets), strict=True))
        else:
            anchor = max(grids, key=lambda g: g.steps)
            if anchor.steps > n_buckets:
                _raise_collisions(anchor, _rank_buckets(anchor.steps, n_buckets), n_buckets)
            anchor_pts = list(anchor.timesteps)
            anchor_b = _rank_buckets(anchor.steps, n_buckets)
            bucket_of = {p: anchor_b[min(range(len(anchor_pts)), key=lambda j: abs(anchor_pts[j] - p))]
                         for p in points}
        tables: dict[str, tuple[int, ...]] = {}
        for g in grids:
            row = tuple(bucket_of[_nearest(points, t)] for t in g.timesteps)
            if len(set(row)) != len(row):
                _raise_collisions(g, row, n_buckets)
            tables[g.name] = row
        inner = _intermediate_tables(grids, points, bucket_of, n_buckets, tolerance)
        return cls(int(n_buckets), int(num_train_timesteps), grids, tables, float(tolerance), inner)

    # ------------------------------------------------------------------ queries
    @property
    def trained(self) -> bool:
        """Whether the map comes from grids (``False``: the grid-free value rule)."""
        return bool(self.grids)

    def table(self, name: str) -> tuple[int, ...]:
        """``b(i)`` for every step ``i`` of the grid called ``name``."""
        if name not in self.tables:
            raise KeyError(f"no student grid {name!r} in the bucket map (grids: {list(self.tables)})")
        return self.tables[name]

    def grid_for(self, spacing: str, steps: int) -> StudentGrid | None:
        """The trained grid of this spacing and step count, if any."""
        return next((g for g in self.grids if g.spacing == spacing and g.steps == steps), None)

    def points(self, intermediate: bool = True) -> tuple[list[float], list[int]]:
        """The distinct trained timesteps (noisiest first) and their buckets (``intermediate``:
        with the intermediate points)."""
        seen: dict[float, int] = {}
        pairs = [(t, b) for g in self.grids for t, b in zip(g.timesteps, self.tables[g.name], strict=True)]
        if intermediate:
            pairs += [(t, b) for g in self.grids
                      for t, b in zip(g.intermediate, self.intermediate_tables.get(g.name, ()), strict=True)]
        for t, b in pairs:
            if all(abs(t - s) > self.tolerance for s in seen):
                seen[t] = b
        ts = sorted(seen, reverse=True)
        return ts, [seen[t] for t in ts]

    def own_intermediate_points(self) -> list[float]:
        """The intermediate timesteps (noisiest first) that are no grid point: the points whose
        buckets only data at those timesteps can calibrate."""
        return _off_grid_intermediates(self.grids, self.points(intermediate=False)[0], self.tolerance)

    def lookup(self, timestep: Tensor) -> Tensor:
        """Buckets ``[B]`` (long) of model timesteps ``[B]`` (any float dtype and device)."""
        t = timestep.detach().reshape(-1)
        if not self.trained:
            tf = t.float()
            snapped = torch.where((tf - tf.round()).abs() <= self.tolerance, tf.round(), tf)
            idx = torch.div(snapped * self.n_buckets, self.num_train_timesteps, rounding_mode="floor")
            return idx.clamp_(0, self.n_buckets - 1).long()
        keys, buckets = self._device_keys(t.device)
        tf = t.to(keys.dtype)
        hi = torch.searchsorted(keys, tf).clamp_(1, keys.numel() - 1) if keys.numel() > 1 else \
            torch.zeros_like(tf, dtype=torch.long)
        lo = (hi - 1).clamp_(min=0)
        pick = torch.where((tf - keys[lo]).abs() <= (keys[hi] - tf).abs(), lo, hi)
        if not self._warned:
            dist = (tf - keys[pick]).abs()
            if bool((dist > self.tolerance).any()):
                self._warned = True
                far = float(tf[int(dist.argmax())])
                log.warning(
                    "timestep %.6g (and maybe others) is not a point of the student's trained grids "
                    "(%s): it uses the activation bucket of the nearest trained timestep; this is "
                    "said once", far, ", ".join(f"{g.spacing}/{g.steps}" for g in self.grids))
        return buckets[pick]

    def _device_keys(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if device not in self._keys:
            ts, bs = self.points()
            order = sorted(range(len(ts)), key=lambda j: ts[j])
            dtype = torch.float64 if device.type in ("cpu", "cuda") else torch.float32
            self._keys[device] = (torch.tensor([ts[j] for j in order], dtype=dtype, device=device),
                                  torch.tensor([bs[j] for j in order], dtype=torch.long, device=device))
        return self._keys[device]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "n_buckets": self.n_buckets,
            "num_train_timesteps": self.num_train_timesteps,
            "tolerance": self.tolerance,
            "grids": [{"name": g.name, "spacing": g.spacing, "steps": g.steps,
                       "timesteps": list(g.timesteps), "buckets": list(self.tables[g.name]),
                       **({"intermediate": list(g.intermediate),
                           "intermediate_buckets": list(self.intermediate_tables[g.name])}
                          if g.intermediate else {})}
                      for g in self.grids],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BucketMap:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a bucket map (format {d.get('format')!r}, expected {FORMAT!r})")
        grids = tuple(StudentGrid(g["name"], g["spacing"], int(g["steps"]),
                                  tuple(float(t) for t in g["timesteps"]),
                                  tuple(float(t) for t in g.get("intermediate", ()))) for g in d["grids"])
        tables = {g["name"]: tuple(int(b) for b in g["buckets"]) for g in d["grids"]}
        inner = {g["name"]: tuple(int(b) for b in g["intermediate_buckets"]) for g in d["grids"]
                 if g.get("intermediate")}
        return cls(int(d["n_buckets"]), int(d["num_train_timesteps"]), grids, tables,
                   float(d.get("tolerance", TOLERANCE)), inner)

    def same_as(self, other: BucketMap) -> bool:
        """Equal grid tables and grid points (timesteps to ``tolerance``); intermediate points
        are not compared (see the module docstring)."""
        if (self.n_buckets, self.num_train_timesteps, self.tables) != (
                other.n_buckets, other.num_train_timesteps, other.tables):
            return False
        a, b = self.points(intermediate=False), other.points(intermediate=False)
        return a[1] == b[1] and len(a[0]) == len(b[0]) and all(
            abs(x - y) <= self.tolerance for x, y in zip(a[0], b[0], strict=True))


def _intermediate_tables(grids: Sequence[StudentGrid], points: list[float], bucket_of: dict[float, int],
                         n_buckets: int, tol: float) -> dict[str, tuple[int, ...]]:
    """Buckets of every grid's intermediate points: a grid point's own where one coincides, else
    an unused bucket, in noise order (raises :class:`BucketCollisionError` when too few are left)."""
    if not any(g.intermediate for g in grids):
        return {}
    new = _off_grid_intermediates(grids, points, tol)
    free = sorted(set(range(n_buckets)) - set(bucket_of.values()), reverse=True)
    if len(new) > len(free):
        names = ", ".join(f"{g.name} ({g.spacing})" for g in grids if g.intermediate)
        raise BucketCollisionError(
            f"{names}: {len(new)} intermediate points need activation buckets of their own and "
            f"{n_buckets} buckets leave {len(free)} after the {len(bucket_of)} grid points; use "
            f"n_buckets >= {len(bucket_of) + len(new)}")
    # free buckets spread over the noise range in rank order, as the grid points' are
    pick = [free[math.floor(r * len(free) / len(new))] for r in range(len(new))]
    own = dict(zip(new, pick, strict=True))
    out = {}
    for g in grids:
        if g.intermediate:
            out[g.name] = tuple(bucket_of[_nearest(points, t)] if min(abs(t - p) for p in points) <= tol
                                else own[_nearest(new, t)] for t in g.intermediate)
    return out


def _off_grid_intermediates(grids: Sequence[StudentGrid], points: list[float], tol: float) -> list[float]:
    """The distinct intermediate timesteps of ``grids`` (noisiest first) farther than ``tol`` from
    every grid point: those that get buckets of their own."""
    return _distinct(sorted({t for g in grids for t in g.intermediate
                             if min(abs(t - p) for p in points) > tol}, reverse=True), tol)


def _rank_buckets(u: int, n_buckets: int) -> list[int]:
    """Buckets of ``u`` points ranked from the noisiest: ``n_buckets - 1 - floor(r * n_buckets / u)``."""
    return [n_buckets - 1 - math.floor(r * n_buckets / u) for r in range(u)]


def _distinct(sorted_desc: list[float], tol: float) -> list[float]:
    out: list[float] = []
    for t in sorted_desc:
        if not out or abs(out[-1] - t) > tol:
            out.append(t)
    return out


def _nearest(points: list[float], t: float) -> float:
    return min(points, key=lambda p: abs(p - t))


def _raise_collisions(grid: StudentGrid, row: Sequence[int], n_buckets: int) -> None:
    by_bucket: dict[int, list[int]] = {}
    for i, b in enumerate(row):
        by_bucket.setdefault(b, []).append(i)
    shared = [(b, steps) for b, steps in sorted(by_bucket.items()) if len(steps) > 1]
    listed = "; ".join(f"steps {s} -> bucket {b}" for b, s in shared[:5])
    more = f" (and {len(shared) - 5} more buckets)" if len(shared) > 5 else ""
    raise BucketCollisionError(
        f"{grid.name} ({grid.spacing}, {grid.steps} steps): {n_buckets} activation-quantizer "
        f"timestep buckets cannot give its steps distinct buckets: {listed}{more}. Use "
        f"n_buckets >= the number of distinct grid points of all phases, or nested grids")
