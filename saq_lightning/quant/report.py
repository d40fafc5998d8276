"""A printable summary of what a policy did to a model (module, bits, LoRA, parameter counts) and,
given MAC counts (:mod:`.macs`), what it covers: parameter, MAC and BOPs shares per precision.

BOPs (bit operations) as the paper counts them: every Conv2d/Linear MAC times its weight bits
times its activation bits, full precision counting 32 x 32; so the FP model's BOPs are its
conv+linear MACs x 1024 (LDM-4: 102.16 T, the paper's 102.20 T). The attention score/value
matmuls are not conv/linear MACs: they are listed apart and left out of the BOPs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .attention import QuantAttnProcessor
from .kernels import QuantKernelsError
from .layers import QuantLayer
from .macs import MacCounts
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
    macs: int | None = None  # per sample and evaluation; None: not counted (see QuantReport.with_macs)

    @property
    def bit_product(self) -> int:
        """Weight bits x activation bits of one MAC (full precision: 32 x 32)."""
        return (self.weight_bits or FP_BITS) * (self.act_bits or FP_BITS)


#: the bit width BOPs charge a full-precision operand
FP_BITS = 32


@dataclass(frozen=True)
class PrecisionShare:
    """The layers at one (weight bits, activation bits): their count, base parameters, MACs and
    BOPs, and each as a fraction of all Conv2d/Linear layers' (``None`` bits: full precision)."""

    weight_bits: int | None
    act_bits: int | None
    layers: int
    params: int
    macs: int
    bops: int
    param_share: float
    mac_share: float
    bop_share: float


@dataclass
class QuantReport:
    policy: str
    rows: list[ReportRow] = field(default_factory=list)
    unmatched_patterns: list[str] = field(default_factory=list)
    total_params: int = 0  # all parameters of the student (shared base + new)
    trainable_params: int = 0
    attention_quantizers: int = 0
    #: MACs of the attention score/value matmuls per sample (None: not counted), not in the BOPs
    attention_macs: int | None = None
    #: their operand bits when quantized (``quantize_attention_matmuls``), None: full precision
    attention_bits: int | None = None

    @property
    def quantized(self) -> list[ReportRow]:
        return [r for r in self.rows if r.weight_bits is not None]

    def with_macs(self, counts: MacCounts) -> QuantReport:
        """This report with every row's MACs from ``counts`` (taken on the FP UNet; rows are
        matched by module name). A row whose layer did not run is an error, not a zero."""
        missing = [r.module for r in self.rows if r.module not in counts.layers]
        if missing:
            raise ValueError(f"no MAC count for {len(missing)} layer(s) of the report, e.g. "
                             f"{missing[0]!r}: count on the FP UNet the student was built from")
        return replace(self, rows=[replace(r, macs=counts.layers[r.module]) for r in self.rows],
                       attention_macs=counts.attention_total)

    def _counted(self) -> list[ReportRow]:
        if not self.rows or any(r.macs is None for r in self.rows):
            raise ValueError("the report has no MAC counts: call report.with_macs(count_macs(...))")
        return self.rows

    @property
    def macs(self) -> int:
        """Conv2d/Linear MACs per sample."""
        return sum(r.macs for r in self._counted())

    @property
    def bops(self) -> int:
        """Bit operations per sample: sum over conv/linear layers of MACs x W bits x A bits."""
        return sum(r.macs * r.bit_product for r in self._counted())

    @property
    def fp_bops(self) -> int:
        """The full-precision model's BOPs: conv/linear MACs x 32 x 32."""
        return self.macs * FP_BITS * FP_BITS

    def precision_shares(self) -> list[PrecisionShare]:
        """One :class:`PrecisionShare` per (weight bits, activation bits), fewest BOPs per MAC first."""
        rows = self._counted()
        params, macs, bops = (sum(r.base_params for r in rows), self.macs, self.bops)
        groups: dict[tuple[int | None, int | None], list[ReportRow]] = {}
        for r in rows:
            groups.setdefault((r.weight_bits, r.act_bits), []).append(r)
        shares = []
        for (w, a), group in sorted(groups.items(), key=lambda kv: (kv[1][0].bit_product, str(kv[0]))):
            p, m = sum(r.base_params for r in group), sum(r.macs for r in group)
            b = sum(r.macs * r.bit_product for r in group)
            shares.append(PrecisionShare(w, a, len(group), p, m, b, p / max(1, params), m / max(1, macs),
                                         b / max(1, bops)))
        return shares

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
        if self.rows and all(r.macs is not None for r in self.rows):
            out += self.coverage_lines()
        for u in self.unmatched_patterns:
            out.append(f"warning: pattern {u} matched nothing")
        return "\n".join(out)


    def coverage_lines(self) -> list[str]:
        """What the precisions cover (parameters, MACs, BOPs) and the BOPs against FP."""
        lines = [f"{_precision(s.weight_bits, s.act_bits)}: {s.layers} layers, {100 * s.param_share:.1f} % of "
                 f"conv/linear parameters, {100 * s.mac_share:.1f} % of conv/linear MACs, "
                 f"{100 * s.bop_share:.1f} % of BOPs" for s in self.precision_shares()]
        lines.append(f"BOPs per sample: {self.bops / 1e12:.2f} T vs FP {self.fp_bops / 1e12:.2f} T "
                     f"({self.fp_bops / max(1, self.bops):.1f}x fewer); conv/linear MACs "
                     f"{self.macs / 1e9:.2f} G")
        if self.attention_macs:
            bits = f"at {self.attention_bits} bit" if self.attention_bits else "in full precision"
            lines.append(f"attention score/value matmuls (not in the BOPs): {self.attention_macs / 1e9:.2f} G "
                         f"MACs ({100 * self.attention_macs / (self.attention_macs + self.macs):.1f} % of all "
                         f"MACs), {bits}")
        return lines


def _precision(weight_bits: int | None, act_bits: int | None) -> str:
    return "FP" if weight_bits is None and act_bits is None else f"W{_b(weight_bits)}A{_b(act_bits)}"


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
        attention_bits=(policy.attn_bits or policy.act_bits) if policy.quantize_attention_matmuls else None,
    )
