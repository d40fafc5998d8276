"""Error bars for quality tables: intervals over training seeds and paired bootstrap differences.

Two sources of noise enter a quality figure such as the digits FD: the training seed (a student
trained again is another student) and the finite set of x_T it is sampled from. A cell's interval
is over training seeds (Student's t); a *difference* between two rows is bootstrapped over both at
once, paired over the shared x_T:

* every draw resamples the x_T indices once (the same indices for both rows: they were sampled from
  the same x_T, so the pairing removes most of the x_T noise from the difference), and
* resamples each row's training seeds with replacement (rows are trained independently, so their
  seeds are not paired); an untrained row (FP, naive PTQ) has one "seed" and keeps it.

The statistic of a row is the mean over its resampled seeds of a set statistic (FD, accuracy, a
distance) of its samples at the resampled indices. The interval is the percentile interval of the
draws moved so that their median sits on the full-sample estimate: resampling biases an FD (a
resample's repeated samples shrink its covariance), by a different amount for each row, and only
the draws' spread is the estimate's noise (the shift is kept as ``resampling_shift``). A stated
difference is a tie when the interval contains 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: a set statistic of one row and seed at the given x_T indices
SetStatistic = Callable[[int, np.ndarray], float]


@dataclass(frozen=True)
class SeedInterval:
    """Mean over ``n`` training seeds, its ``level`` confidence interval (Student's t with ``n - 1``
    degrees of freedom) and the prediction interval for one more seed (``sd * sqrt(1 + 1/n)``):
    an independent rerun with a new seed should fall inside the latter, not the former. ``n = 1``:
    no interval (``nan`` bounds)."""

    mean: float
    lo: float
    hi: float
    pred_lo: float
    pred_hi: float
    sd: float
    n: int
    values: tuple[float, ...]
    level: float = 0.95

    def as_dict(self) -> dict:
        d = asdict(self)
        d["values"] = list(self.values)
        return d


def seed_interval(values: Sequence[float], level: float = 0.95) -> SeedInterval:
    """The mean of per-seed values with its t interval and the one-new-seed prediction interval."""
    from scipy.stats import t as student_t

    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if v.size == 0:
        raise ValueError("seed_interval needs at least one value")
    if not np.isfinite(v).all():
        raise ValueError(f"seed_interval: non-finite values {v.tolist()}")
    mean = float(v.mean())
    if v.size == 1:
        nan = float("nan")
        return SeedInterval(mean, nan, nan, nan, nan, nan, 1, tuple(v.tolist()), level)
    sd = float(v.std(ddof=1))
    q = float(student_t.ppf(0.5 + level / 2, v.size - 1))
    half, pred = q * sd / math.sqrt(v.size), q * sd * math.sqrt(1 + 1 / v.size)
    return SeedInterval(mean, mean - half, mean + half, mean - pred, mean + pred, sd, int(v.size),
                        tuple(v.tolist()), level)


@dataclass(frozen=True)
class PairedDifference:
    """``estimate`` = statistic(A) - statistic(B) on all x_T and seeds; ``[lo, hi]`` its paired
    bootstrap interval (percentile, centred on the estimate); ``tie``: the interval contains 0."""

    estimate: float
    lo: float
    hi: float
    draws: int
    level: float
    seeds_a: int
    seeds_b: int
    n: int
    resampling_shift: float = 0.0  # median of the draws minus the estimate (the resamples' own bias)

    @property
    def tie(self) -> bool:
        return self.lo <= 0.0 <= self.hi

    def as_dict(self) -> dict:
        return {**asdict(self), "tie": self.tie}


def paired_bootstrap_difference(stat_a: SetStatistic, seeds_a: int, stat_b: SetStatistic, seeds_b: int,
                                n: int, draws: int = 1000, level: float = 0.95,
                                seed: int = 0) -> PairedDifference:
    """Bootstrap ``mean_s stat_a(s, I) - mean_s stat_b(s, I)`` over shared x_T indices ``I`` (paired)
    and each row's training seeds (independently); see the module docstring.

    ``stat_x(k, idx)``: the statistic of row x's ``k``-th seed on the samples at ``idx`` (indices
    into the ``n`` shared x_T; repeated indices are repeated samples)."""
    if n < 2 or seeds_a < 1 or seeds_b < 1 or draws < 1:
        raise ValueError(f"need n >= 2 samples, >= 1 seed per row and >= 1 draw; got n={n}, "
                         f"seeds {seeds_a}/{seeds_b}, draws={draws}")
    everything = np.arange(n)
    estimate = (np.mean([stat_a(k, everything) for k in range(seeds_a)])
                - np.mean([stat_b(k, everything) for k in range(seeds_b)]))
    rng = np.random.default_rng(seed)
    diffs = np.empty(draws)
    for i in range(draws):
        idx = rng.integers(0, n, n)
        ka, kb = rng.integers(0, seeds_a, seeds_a), rng.integers(0, seeds_b, seeds_b)
        # each seed's statistic once per draw; the resampled seeds index into them
        va = np.array([stat_a(k, idx) for k in range(seeds_a)])
        vb = np.array([stat_b(k, idx) for k in range(seeds_b)])
        diffs[i] = va[ka].mean() - vb[kb].mean()
    alpha = (1 - level) / 2
    q_lo, median, q_hi = np.quantile(diffs, [alpha, 0.5, 1 - alpha])
    # the percentile interval moved onto the full-sample estimate: an FD of a resample with repeated
    # samples is biased up, by a different amount for each row, which shifts the draws; their spread
    # around their median is the noise of the estimate
    shift = estimate - median
    return PairedDifference(float(estimate), float(q_lo + shift), float(q_hi + shift), draws, level, seeds_a,
                            seeds_b, n, float(median - estimate))
