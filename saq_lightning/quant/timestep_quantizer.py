"""Timestep-aware activation quantizer: one (step, zero point) per timestep bucket.

The table is a single ``[n_buckets]`` parameter (DDP-safe: indexing it always produces a
gradient for the whole tensor, so no parameter is ever "unused"). Which bucket each sample
uses comes from the model timestep passed with the student's call: the student writes the
per-sample bucket indices into a :class:`TimestepContext` for the duration of that call only.
There is no step counter anywhere.

Which bucket a timestep gets is the student's :class:`~saq_lightning.quant.bucket_map.BucketMap`
(explicit per-grid tables once the student is bound to its trained grids). :func:`bucket_index`
here is the grid-free value rule ``floor(timestep * n_buckets / N)`` (timesteps within 1e-3 of an
integer rounded to it first), which is also the map of a student never bound to grids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .functional import lsq_grad_factor
from .quantizers import AffineQuantizer


def bucket_index(
    timestep: Tensor | float,
    n_buckets: int,
    num_train_timesteps: int = 1000,
    batch_size: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Per-sample bucket indices ``[B]`` (long) for model timesteps on the ``0..N-1`` scale.

    A scalar (or one-element) timestep is broadcast to ``batch_size`` when given.
    """
    t = torch.as_tensor(timestep, device=device).reshape(-1)
    if batch_size is not None and t.numel() != batch_size:
        if t.numel() != 1:
            raise ValueError(f"got {t.numel()} timesteps for a batch of {batch_size}")
        t = t.expand(batch_size)
    from .bucket_map import BucketMap

    return BucketMap.uniform(n_buckets, num_train_timesteps).lookup(t)


class TimestepContext:
    """Holds the per-sample bucket indices of the call in progress (``None`` outside a call).

    One instance is shared by all activation quantizers of a student; only
    :meth:`QuantizedUNet.forward` / :meth:`active` set it, always in a ``try/finally``.
    """

    def __init__(self) -> None:
        self.bucket: Tensor | None = None

    @contextmanager
    def active(self, bucket: Tensor) -> Iterator[None]:
        previous = self.bucket
        self.bucket = bucket
        try:
            yield
        finally:
            self.bucket = previous


class TimestepActQuantizer(AffineQuantizer):
    """Per-tensor activation quantizer with a ``[n_buckets]`` table of (step, zero point).

    ``forward``-free by design: layers ask :meth:`params_for` for per-sample ``(step, zp)``
    shaped ``[B, 1, ..., 1]`` and pass them to ``fake_quantize``.
    """

    def __init__(
        self,
        n_buckets: int,
        bits: int,
        context: TimestepContext,
        symmetric: bool = False,
        init: str = "lp",
        p: float = 2.4,
    ) -> None:
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
        super().__init__(n_buckets, bits, symmetric, per_channel=False, init=init, p=p)
        self.n_buckets = n_buckets
        self.context = context
        self.register_buffer("calibrated", torch.zeros(n_buckets, dtype=torch.bool))
        self.name = ""  # set by the model builder, used in error messages
        # set by calibrate() for the duration of calibration only
        self.observer: Callable[[Tensor, Tensor], None] | None = None

    def current_bucket(self, batch: int) -> Tensor:
        idx = self.context.bucket
        if idx is None:
            if self.n_buckets == 1:
                return torch.zeros(1, dtype=torch.long, device=self.step.device)
            raise RuntimeError(
                f"activation quantizer {self.name!r} called outside a timestep context: call the "
                "quantized student with its timestep (or use student.timestep_context(t))"
            )
        if idx.shape[0] not in (1, batch):
            raise RuntimeError(
                f"activation quantizer {self.name!r}: input batch {batch} does not match the "
                f"{idx.shape[0]} timesteps of the call"
            )
        return idx

    def _check_initialised(self) -> None:
        if not self._initialised:
            raise RuntimeError(
                f"activation quantizer {self.name!r} is not initialised: run "
                "saq_lightning.quant.calibrate(student, batches) first"
            )

    def bucket_for(self, x: Tensor) -> tuple[Tensor, float]:
        """Per-sample bucket indices for ``x`` (``[B]`` or ``[1]``) and the LSQ grad factor."""
        self._check_initialised()
        return self.current_bucket(x.shape[0]), lsq_grad_factor(x[0].numel(), self.qmax)

    def params_for(self, x: Tensor) -> tuple[Tensor, Tensor, float]:
        """Per-sample ``(step, zero_point)`` broadcastable to ``x`` and the LSQ grad factor
        (autograd ops: the table's gradient is a scatter-add over the batch's buckets)."""
        idx, gf = self.bucket_for(x)
        s, z = self.effective()
        view = (idx.shape[0],) + (1,) * (x.ndim - 1)
        return s[idx].view(view), z[idx].view(view), gf

    def observe(self, x: Tensor) -> None:
        """Hand ``x`` and its per-sample buckets to the calibration observer, if one is set."""
        if self.observer is not None:
            self.observer(x.detach(), self.current_bucket(x.shape[0]))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_buckets={self.n_buckets}"
