"""Calibration: initialise every quantizer of a student from data.

* Weights: once, from the merged weight (``W + LoRA delta``), per output channel.
* Activations: the student runs over calibration batches ``(x, t, cond)`` with FP activations
  (weights already quantized); every activation quantizer records a sample of its inputs *per
  timestep bucket*, then each bucket's (step, zero point) is initialised from its own data.
  Buckets that no calibration timestep reached take the values of the nearest calibrated one.

Run it identically on every rank (or on one rank before wrapping in DDP, which broadcasts).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .model import QuantizedUNet
from .ranges import check_init_method, init_params
from .state import set_quant_state
from .timestep_quantizer import TimestepActQuantizer

Batch = Mapping[str, Any] | Sequence[Any]


def _subset(n: int, k: int, generator: torch.Generator) -> Tensor:
    """``k`` distinct indices of ``0..n-1``, uniformly (without building ``randperm(n)`` for a big ``n``)."""
    if k >= n:
        return torch.arange(n)
    if n > 16 * k:  # distinct values among with-replacement draws form a uniform random subset
        draw = torch.unique(torch.randint(0, n, (k + k // 4 + 16,), generator=generator))
        if draw.numel() >= k:
            return draw[torch.randperm(draw.numel(), generator=generator)[:k]]
    return torch.randperm(n, generator=generator)[:k]


class Reservoir:
    """A uniform random sample, without replacement, of at most ``size`` values of a stream.

    Memory is bounded whatever the stream's length: chunks wait in a buffer of at most
    ``4 * size`` values (plus the last chunk), which then joins the ``n`` values seen so far by
    drawing how many of the ``size`` kept values come from it (hypergeometric), then that many
    from the buffer and the rest from the reservoir, uniformly. Merging a buffer at once or its
    chunks one by one gives the same distribution; at once is far fewer small tensor ops.
    """

    def __init__(self, size: int, generator: torch.Generator) -> None:
        self.size = int(size)
        self.generator = generator
        self._seen = 0
        self._kept = torch.empty(0)
        self._pending: list[Tensor] = []
        self._pending_count = 0
        self._np = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))

    @property
    def seen(self) -> int:
        """Values added so far."""
        return self._seen + self._pending_count

    @property
    def values(self) -> Tensor:
        self._flush()
        return self._kept

    def add(self, v: Tensor) -> None:
        v = v.detach().reshape(-1).float()
        if v.numel() == 0:
            return
        self._pending.append(v.cpu())
        self._pending_count += v.numel()
        if self._pending_count >= 4 * self.size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        v = torch.cat(self._pending)
        self._pending, self._pending_count = [], 0
        m, n, k = v.numel(), self._seen, self.size
        if n + m <= k:
            self._kept = torch.cat([self._kept, v])
        else:
            j = int(self._np.hypergeometric(m, n, k)) if n else k  # from the buffer
            keep_old = self._kept[_subset(self._kept.numel(), k - j, self.generator)]
            self._kept = torch.cat([keep_old, v[_subset(m, j, self.generator)]])
        self._seen = n + m


class BucketObserver:
    """One :class:`Reservoir` (at most ``max_values``) of a quantizer's inputs per timestep bucket."""

    def __init__(self, max_values: int, generator: torch.Generator) -> None:
        self.max_values = max_values
        self.generator = generator
        self.reservoirs: dict[int, Reservoir] = {}
        self.count: dict[int, int] = defaultdict(int)

    def __call__(self, x: Tensor, bucket: Tensor) -> None:
        x = x.float()
        if bucket.shape[0] == 1 and x.shape[0] != 1:
            bucket = bucket.expand(x.shape[0])
        flat = x.reshape(x.shape[0], -1)
        for b in torch.unique(bucket).tolist():
            if b not in self.reservoirs:
                self.reservoirs[b] = Reservoir(self.max_values, self.generator)
            self.reservoirs[b].add(flat[bucket == b])
            self.count[b] += 1

    def samples(self) -> dict[int, Tensor]:
        return {b: r.values for b, r in self.reservoirs.items()}


@torch.no_grad()
def init_weight_quantizers(student: QuantizedUNet, method: str | None = None, force: bool = False) -> int:
    """Initialise weight quantizers that are not yet initialised (all if ``force``). Returns the count."""
    n = 0
    for _, layer in student.quant_layers():
        if layer.integer or (layer.w_quant.is_initialised and not force):
            continue
        layer.w_quant.init_from(layer.merged_weight(), method)
        n += 1
    return n


def _fill_nearest(calibrated: Tensor) -> Tensor:
    """Index of the nearest calibrated bucket for every bucket (ties: the lower one)."""
    have = torch.nonzero(calibrated).flatten()
    pos = torch.arange(calibrated.numel())
    dist = (pos[:, None] - have[None, :]).abs()
    return have[dist.argmin(1)]


@torch.no_grad()
def init_act_quantizer(
    qz: TimestepActQuantizer, samples: Mapping[int, Tensor], method: str | None = None
) -> None:
    """Set the buckets in ``samples`` from their data; fill the others from the nearest one.

    Buckets whose samples have the same length are initialised in one vectorised call.
    """
    if not samples:
        raise ValueError(f"no calibration data for activation quantizer {qz.name!r}")
    method = check_init_method(method or qz.init_method)
    step = torch.ones(qz.n_buckets)
    zp = torch.zeros(qz.n_buckets)
    by_len: dict[int, list[int]] = defaultdict(list)
    for b, v in samples.items():
        by_len[v.numel()].append(b)
    for buckets in by_len.values():
        s, z = init_params(torch.stack([samples[b] for b in buckets]), qz.qmin, qz.qmax, qz.symmetric, method, qz.p)
        step[buckets], zp[buckets] = s, z
    calibrated = torch.zeros(qz.n_buckets, dtype=torch.bool)
    calibrated[sorted(samples)] = True
    src = _fill_nearest(calibrated)
    qz._set_params(step[src], zp[src])
    qz.calibrated.copy_(calibrated.to(qz.calibrated.device))


def _iter_batches(batches: Batch | Iterable[Batch]) -> Iterator[Batch]:
    if isinstance(batches, Mapping) or isinstance(batches, (tuple, list)) and batches and isinstance(batches[0], Tensor):
        yield batches
    else:
        yield from batches  # type: ignore[misc]


def _call(student: QuantizedUNet, batch: Batch) -> None:
    if isinstance(batch, Mapping):
        student(**batch)
    else:
        student(*batch)


@contextmanager
def _observing(student: QuantizedUNet, max_values: int, seed: int) -> Iterator[dict[str, BucketObserver]]:
    gen = torch.Generator().manual_seed(seed)
    observers: dict[str, BucketObserver] = {}
    quantizers = list(student.act_quantizers())
    with ExitStack() as stack:
        for name, qz in quantizers:
            observers[name] = BucketObserver(max_values, gen)
            qz.observer = observers[name]
            stack.callback(setattr, qz, "observer", None)
        yield observers


@torch.no_grad()
def calibrate(
    student: QuantizedUNet,
    batches: Batch | Iterable[Batch],
    *,
    act_method: str | None = None,
    weight_method: str | None = None,
    reinit_weights: bool = False,
    max_values_per_bucket: int = 4096,
    seed: int = 0,
) -> dict[str, Any]:
    """Initialise all quantizers of ``student`` from calibration data.

    ``batches``: one batch or an iterable of batches; a batch is the student's call arguments,
    either a mapping (``{"sample": x, "timestep": t, "encoder_hidden_states": c}``) or a tuple
    ``(x, t, *args)``. ``*_method``: ``"lp"`` or ``"minmax"`` (default: the policy's).
    Returns a summary (``buckets``: the calibrated bucket indices, ``n_batches``, counts).
    """
    n_weights = init_weight_quantizers(student, weight_method, force=reinit_weights)
    was_training = student.training
    student.eval()
    n_batches = 0
    try:
        with set_quant_state(student, weight=True, act=False), _observing(
            student, max_values_per_bucket, seed
        ) as observers:
            for batch in _iter_batches(batches):
                _call(student, batch)
                n_batches += 1
    finally:
        student.train(was_training)
    if n_batches == 0:
        raise ValueError("calibrate() got no batches")
    seen: set[int] = set()
    for name, qz in student.act_quantizers():
        samples = observers[name].samples()
        if not samples:  # a module the forward never reached: leave it uninitialised, loudly
            warnings.warn(f"calibration data never reached activation quantizer {qz.name or name!r}", UserWarning)
            continue
        init_act_quantizer(qz, samples, act_method)
        seen.update(samples)
    return {
        "n_batches": n_batches,
        "buckets": sorted(seen),
        "weight_quantizers": n_weights,
        "act_quantizers": len(observers),
    }
