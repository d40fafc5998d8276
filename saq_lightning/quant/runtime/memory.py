"""Bytes of weights a model holds in memory (integer codes counted at their storage size)."""

from __future__ import annotations

from torch import nn

from .kernels import storage_bytes
from .layers import RuntimeLayer


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """``{"quantized": ..., "other": ..., "total": ...}``: bytes of the quantized layers' weights
    (packed codes + scales + zero points for a runtime layer, plus its int8 GEMM layout or its
    once-dequantized float weight where it holds one; the FP weight of a Conv2d/Linear
    that a policy quantizes otherwise is not known here, so ``quantized`` is 0 for FP models) and
    of every other parameter/buffer (FP layers, norms, embeddings, quantizer tables)."""
    quantized = 0
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, RuntimeLayer):
            quantized += m.weight_bytes
            seen.update(id(t) for t in (m.qweight, m.w_scale, m.w_zero, m.gemm_weight, m.float_weight) if t is not None)
    other = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            other += storage_bytes(t)
    return {"quantized": quantized, "other": other, "total": quantized + other}
