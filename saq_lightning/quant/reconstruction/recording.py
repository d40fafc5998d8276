"""Record what a block sees: its call arguments (and, for the FP side, its output), row by row.

The FP block's input comes from the FP teacher, the quantized block's input from the student whose
earlier blocks are already reconstructed (its quantized prefix), as BRECQ and Q-Diffusion do. A
forward pre-hook on the block grabs its ``(args, kwargs)`` and stops the forward there
(``_StopForward``), so recording block ``i`` costs the prefix only.

Rows: a UNet call of ``R * b`` rows for ``b`` samples (``R = 2`` under classifier-free guidance:
the conditional and the unconditional half) is stored sample-major, so that the rows of sample
``j`` are ``j * R .. j * R + R - 1`` on every rank and for every batching.

Memory: a :class:`BlockCache` holds, per block, the batched tensors of the quantized input, the
FP block's output (the target), and the per-row timestep buckets. ``cache="memory"`` keeps them in
RAM; ``"disk"`` (or ``"auto"`` above ``cache_limit_gb``) writes them with ``torch.save`` and maps
them back with ``mmap=True``: the page cache then decides what stays resident, at the price of
reading the rows of every minibatch from disk once they have been evicted. The FP *input* is not
kept: the target ``f_i(FP input)`` is computed once at recording time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from saq_lightning.files import atomic_path, load_tensors


class _StopForward(Exception):
    pass


@dataclass
class CallRecord:
    leaves: list[Any]
    spec: Any
    bucket: Tensor | None
    output: Any = None


def capture_call(
    run: Callable[[], Any], module: nn.Module, *, want_output: bool, context: Any = None
) -> CallRecord:
    """Run ``run()`` until ``module``'s first call; return its inputs (and output if asked)."""
    got: dict[str, Any] = {}

    def pre(mod, args, kwargs):
        leaves, spec = tree_flatten((args, kwargs))
        got["leaves"] = [x.detach().clone() if isinstance(x, Tensor) else x for x in leaves]
        got["spec"] = spec
        bucket = getattr(context, "bucket", None) if context is not None else None
        got["bucket"] = None if bucket is None else bucket.detach().clone()
        if not want_output:
            raise _StopForward

    def post(mod, args, kwargs, out):
        got["output"] = [x.detach().clone() if isinstance(x, Tensor) else x for x in tree_flatten(out)[0]]
        got["out_spec"] = tree_flatten(out)[1]
        raise _StopForward

    h1 = module.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = module.register_forward_hook(post, with_kwargs=True) if want_output else None
    try:
        with torch.no_grad():
            run()
    except _StopForward:
        pass
    finally:
        h1.remove()
        if h2 is not None:
            h2.remove()
    if "leaves" not in got:
        raise RuntimeError(f"the forward pass never reached block {type(module).__name__}")
    rec = CallRecord(got["leaves"], got["spec"], got["bucket"])
    if want_output:
        rec.output = (got["output"], got["out_spec"])
    return rec


def _rows(leaves: list[Any]) -> int:
    for x in leaves:
        if isinstance(x, Tensor) and x.ndim > 0:
            return x.shape[0]
    raise RuntimeError("a block call without a batched tensor argument")


def _sample_major(x: Tensor, samples: int) -> Tensor:
    """``[R * b, ...]`` (R blocks of b rows) -> ``[b * R, ...]`` sample-major."""
    r = x.shape[0] // samples
    if r == 1:
        return x
    return x.reshape(r, samples, *x.shape[1:]).transpose(0, 1).reshape(r * samples, *x.shape[1:])


@dataclass
class BlockCache:
    """Recorded rows of one block: quantized-side inputs, FP-side outputs, buckets."""

    spec: Any = None
    out_spec: Any = None
    batched: list[bool] = field(default_factory=list)
    inputs: list[Any] = field(default_factory=list)  # per leaf: a [N_rows, ...] tensor or a constant
    outputs: list[Tensor] = field(default_factory=list)
    bucket: Tensor | None = None
    rows_per_sample: int = 1
    _chunks: list[tuple[list[Any], list[Tensor], Tensor | None]] = field(default_factory=list)

    @property
    def num_rows(self) -> int:
        return 0 if self.bucket is None and not self.outputs else self.outputs[0].shape[0]

    def add(self, quant: CallRecord, fp: CallRecord, samples: int) -> None:
        rows = _rows(quant.leaves)
        if rows % samples:
            raise RuntimeError(f"block call of {rows} rows for {samples} samples")
        if self.spec is None:
            self.spec, self.out_spec = quant.spec, fp.output[1]
            self.batched = [isinstance(x, Tensor) and x.ndim > 0 and x.shape[0] == rows for x in quant.leaves]
            self.rows_per_sample = rows // samples
        ins = [_sample_major(x, samples) if b else x for x, b in zip(quant.leaves, self.batched, strict=True)]
        outs = [_sample_major(x, samples) for x in fp.output[0] if isinstance(x, Tensor)]
        bucket = quant.bucket
        if bucket is not None:
            bucket = _sample_major(bucket.expand(rows) if bucket.shape[0] == 1 else bucket, samples)
        self._chunks.append((ins, outs, bucket))

    def finish(self, spill_to: Path | None, limit_bytes: float) -> None:
        """Concatenate the recorded chunks; spill to ``spill_to`` when over ``limit_bytes``."""
        chunks, self._chunks = self._chunks, []
        if not chunks:
            raise RuntimeError("no calibration rows were recorded for this block")
        n_in = len(chunks[0][0])
        self.inputs = [torch.cat([c[0][k] for c in chunks]) if self.batched[k] else chunks[0][0][k]
                       for k in range(n_in)]
        self.outputs = [torch.cat([c[1][k] for c in chunks]) for k in range(len(chunks[0][1]))]
        self.bucket = None if chunks[0][2] is None else torch.cat([c[2] for c in chunks])
        if spill_to is not None and self.nbytes() > limit_bytes:
            self.spill(spill_to)

    def nbytes(self) -> int:
        ts = [x for x in self.inputs if isinstance(x, Tensor)] + list(self.outputs)
        return sum(t.numel() * t.element_size() for t in ts)

    def spill(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"inputs": self.inputs, "outputs": self.outputs}, tmp)
        data = load_tensors(path, map_location=None, mmap=True)
        self.inputs, self.outputs = data["inputs"], data["outputs"]

    def rows(self, sample_positions: Tensor, device: torch.device) -> tuple[tuple, dict, list[Tensor], Tensor | None]:
        """(args, kwargs, targets, buckets) of the rows of the given local sample positions."""
        r = self.rows_per_sample
        rows = (sample_positions[:, None] * r + torch.arange(r)[None, :]).reshape(-1)
        leaves = [x[rows].to(device) if b else x for x, b in zip(self.inputs, self.batched, strict=True)]
        args, kwargs = tree_unflatten(leaves, self.spec)
        outs = [y[rows].to(device) for y in self.outputs]
        bucket = None if self.bucket is None else self.bucket[rows].to(device)
        return args, kwargs, outs, bucket

    def output_structure(self, flat: list[Tensor]) -> Any:
        return tree_unflatten(flat, self.out_spec)
