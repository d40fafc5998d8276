"""A printable summary of what a policy did to a model (module, bits, LoRA, parameter counts)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .attention import QuantAttnProcessor
from .kernels import QuantKernelsError
from .layers import QuantLayer
from .policy import QuantPolicy, Resolution


@dataclass
class ReportRow:
    module: str
    type: str
    weight_bits: int | None  # None: full precision
    act_bits: int | None
    lora_rank: int
    base_params: int
    lora_params: int
    quant_params: int
    kernels: str = "-"  # quantizer pieces: "triton" / "eager" (activation/weight if they differ)


@dataclass
class QuantReport:
    policy: str
    rows: list[ReportRow] = field(default_factory=list)
    unmatched_patterns: list[str] = field(default_factory=list)
    total_params: int = 0  # all parameters of the student (shared base + new)
    trainable_params: int = 0
    attention_quantizers: int = 0

    @property
    def quantized(self) -> list[ReportRow]:
        return [r for r in self.rows if r.weight_bits is not None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        head = ("module", "type", "W", "A", "LoRA", "base", "lora", "quant", "kernels")
        lines = [
            (r.module, r.type, _b(r.weight_bits), _b(r.act_bits), str(r.lora_rank),
             f"{r.base_params:,}", f"{r.lora_params:,}", f"{r.quant_params:,}", r.kernels)
            for r in self.rows
        ]
        widths = [max(len(h), *(len(ln[i]) for ln in lines)) if lines else len(h) for i, h in enumerate(head)]

        def fmt(cells):
            return "  ".join(c.ljust(w) if i < 2 or i == 8 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        out = [f"quantization policy {self.policy!r}", fmt(head), fmt(["-" * w for w in widths])]
        out += [fmt(ln) for ln in lines]
        nq = len(self.quantized)
        out.append(
            f"{nq} quantized layers, {len(self.rows) - nq} kept FP; parameters: {self.total_params:,} total, "
            f"{self.trainable_params:,} trainable ({100.0 * self.trainable_params / max(1, self.total_params):.2f} %)"
        )
        if self.attention_quantizers:
            out.append(f"attention score/value matmuls quantized in {self.attention_quantizers} attention modules")
        for u in self.unmatched_patterns:
            out.append(f"warning: pattern {u} matched nothing")
        return "\n".join(out)


def _b(bits: int | None) -> str:
    return "fp" if bits is None else str(bits)


def kernels_label(layer: QuantLayer, device: torch.device | None = None) -> str:
    """Which implementation runs ``layer``'s quantizer pieces on ``device`` (default: where its
    weights are now): ``triton``, ``eager``, or ``activation/weight`` when they differ (``quant_kernels``
    and the device decide; see :mod:`~saq_lightning.quant.kernels`). Raises
    :class:`~saq_lightning.quant.kernels.QuantKernelsError` for ``triton`` where it cannot run."""
    act, weight = layer.kernel_paths(device)
    return act if act == weight else f"{act}/{weight}"


def _row_kernels(layer: QuantLayer) -> str:
    try:
        return kernels_label(layer)
    except QuantKernelsError:  # e.g. built on the CPU, trained on CUDA: the forward decides
        return f"{layer.kernels} (not on {layer.w_quant.step.device.type})"


def kernels_summary(tree: nn.Module, device: torch.device) -> str:
    """One line: which implementation runs the quantizer pieces of ``tree``'s layers on ``device``
    (a request for ``triton`` where it cannot run raises)."""
    layers = [m for m in tree.modules() if isinstance(m, QuantLayer)]
    counts = Counter(kernels_label(m, device) for m in layers)
    choices = sorted({m.kernels for m in layers})
    paths = ", ".join(f"{k} in {n}" for k, n in sorted(counts.items()))
    return f"quant_kernels={'/'.join(choices)} on {device}: quantizer pieces run {paths or 'nowhere'} of {len(layers)} layers"


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def build_report(tree: nn.Module, policy: QuantPolicy, resolution: Resolution) -> QuantReport:
    """Report on ``tree``, the student's (module-swapped) UNet."""
    rows: list[ReportRow] = []
    for name, layer in tree.named_modules():
        if not isinstance(layer, QuantLayer):
            continue
        rows.append(
            ReportRow(
                module=name,
                type=type(layer.base).__name__,
                weight_bits=layer.w_quant.bits,
                act_bits=layer.a_quant.bits,
                lora_rank=layer.lora.rank if layer.lora is not None else 0,
                base_params=_count(layer.base),
                lora_params=_count(layer.lora),
                quant_params=_count(layer.w_quant) + _count(layer.a_quant),
                kernels=_row_kernels(layer),
            )
        )
    for name in resolution.fp_kept:
        m = tree.get_submodule(name)
        rows.append(ReportRow(name, type(m).__name__, None, None, 0, _count(m), 0, 0))
    order = {n: i for i, (n, _) in enumerate(tree.named_modules())}
    rows.sort(key=lambda r: order.get(r.module, len(order)))
    params = list(tree.parameters())
    return QuantReport(
        policy=policy.name,
        rows=rows,
        unmatched_patterns=list(resolution.unmatched),
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        attention_quantizers=sum(isinstance(m, QuantAttnProcessor) for m in tree.modules()),
    )
