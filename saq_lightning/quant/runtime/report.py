"""What the runtime really computes, per layer (and every fallback, stated)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

DESCRIPTIONS = {
    "int8": "int8 x int8 -> int32 GEMM (kernel named per layer)",
    "emulated": "integer codes multiplied in float64 (fallback: no int8 GEMM on this device)",
    "dequantized": "weights dequantized once at load (fp32 in memory), fake-quantized activations in float",
    "weight_only": "packed weights dequantized per call, float activations (memory first, slower)",
    "fake": "fake-quant float (dequantized weight, fake-quantized input)",
    "fp": "full precision (not quantized by the policy)",
}


@dataclass
class LayerArithmetic:
    name: str
    kind: str  # Conv2d 3x3, Linear, attention matmuls, ...
    bits: str  # w4a4, ...
    weight_storage: str  # int4x2, int8, fp32, ...
    arithmetic: str  # a key of DESCRIPTIONS
    note: str = ""
    kernel: str = ""  # what computes the integer product (int8 arithmetic only)
    int8_ms: float | None = None  # load-time measurement of both paths (CPU per-layer choice)
    float_ms: float | None = None


@dataclass
class RuntimeReport:
    """Per-layer arithmetic of a loaded runtime; ``str()`` is a table, ``summary()`` one line."""

    device: str
    requested: str
    layers: list[LayerArithmetic] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.layers:
            out[row.arithmetic] = out.get(row.arithmetic, 0) + 1
        return out

    def fallbacks(self) -> list[LayerArithmetic]:
        """Layers that do not run the requested arithmetic (FP layers of the policy excluded)."""
        return [r for r in self.layers if r.arithmetic not in (self.requested, "fp")]

    def choices(self) -> dict[str, str]:
        """``{layer: "int8" | "dequantized"}`` of the layers the per-layer choice decided, to
        reuse with ``load_runtime(..., probe=ProbeConfig(choices=...))`` (nothing re-measured)."""
        if self.requested != "int8":
            return {}
        return {r.name: r.arithmetic for r in self.layers if r.arithmetic in ("int8", "dequantized")}

    def summary(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts().items()))
        return f"runtime on {self.device}, requested {self.requested}: {counts}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        width = max([len(r.name) for r in self.layers] + [5])
        lines = [self.summary(), *self.notes, f"{'layer':<{width}}  {'kind':<16} {'bits':<6} {'weights':<8} arithmetic"]
        for r in self.layers:
            kernel = f" [{r.kernel}]" if r.kernel else ""
            extra = f" ({r.note})" if r.note else ""
            lines.append(f"{r.name:<{width}}  {r.kind:<16} {r.bits:<6} {r.weight_storage:<8} {r.arithmetic}{kernel}{extra}")
        lines.append("arithmetics: " + "; ".join(f"{k} = {DESCRIPTIONS[k]}" for k in sorted(self.counts())))
        return "\n".join(lines)
