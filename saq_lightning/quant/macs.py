"""Multiply-accumulates of one UNet evaluation, per Conv2d/Linear and per attention module.

Counted with forward hooks on the full-precision UNet (one call with the caller's inputs, any
device; on ``meta`` tensors the 400M-parameter LDM-4 UNet is counted from shapes alone, without
weights). The quantized student keeps the teacher's module names, so the counts attach to its
:class:`~saq_lightning.quant.report.QuantReport` rows by name.

* Conv2d: ``output elements x in_channels / groups x kernel area``;
* Linear: ``output elements x in_features``;
* diffusers ``Attention``: the two matmuls inside the processor, ``q k^T`` and ``probs v``, each
  ``L_q x L_k x inner_dim`` (summed over heads), from the shapes of ``to_q`` and ``to_k`` outputs.

Biases are not counted (the usual MAC convention, and the one behind the paper's BOPs).
All counts are per sample (the call's batch size divided out).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .attention import is_diffusers_attention


@dataclass
class MacCounts:
    """Per-sample MACs of one evaluation: ``layers[name]`` for every Conv2d/Linear that ran,
    ``attention[name]`` (score + value matmuls) for every diffusers ``Attention`` module."""

    layers: dict[str, int] = field(default_factory=dict)
    attention: dict[str, int] = field(default_factory=dict)

    @property
    def layer_total(self) -> int:
        return sum(self.layers.values())

    @property
    def attention_total(self) -> int:
        return sum(self.attention.values())


def _layer_macs(module: nn.Module, out: Tensor) -> int:
    per_output = (module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
                  if isinstance(module, nn.Conv2d) else module.in_features)
    return out.numel() // out.shape[0] * per_output


def count_macs(unet: nn.Module, call: Callable[[], Any]) -> MacCounts:
    """Run ``call()`` (which evaluates ``unet`` once, e.g. ``lambda: unet(x, t)``) with hooks on
    ``unet``'s Conv2d/Linear modules and return their per-sample MACs and the attention matmuls'."""
    counts = MacCounts()
    shapes: dict[str, torch.Size] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: Any, out: Tensor) -> None:
            counts.layers[name] = counts.layers.get(name, 0) + _layer_macs(module, out)
            shapes[name] = out.shape
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in unet.named_modules()
               if type(m) in (nn.Conv2d, nn.Linear)]
    try:
        with torch.no_grad():
            call()
    finally:
        for h in handles:
            h.remove()
    for name, m in unet.named_modules():
        q, k = shapes.get(f"{name}.to_q"), shapes.get(f"{name}.to_k")
        if is_diffusers_attention(m) and q is not None and k is not None:
            counts.attention[name] = 2 * q[-2] * k[-2] * q[-1]  # q k^T and probs v, all heads
    return counts
