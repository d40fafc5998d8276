"""``sample --runtime int`` logs its fallbacks as one line per kind, not one per layer."""

from __future__ import annotations

from saq_lightning.quant.runtime.report import LayerArithmetic
from saq_lightning.students.runtime import fallback_lines


def _row(name: str, arithmetic: str, note: str = "") -> LayerArithmetic:
    return LayerArithmetic(name, "Conv2d 3x3", "w8a8", "int8", arithmetic, note)


def test_forty_float_layers_are_one_line_with_their_count_and_first_names():
    rows = [_row(f"down.{i}", "dequantized", "float 0.1 ms < int8 0.3 ms") for i in range(40)]
    rows.append(_row("mid.attn", "emulated", "no int8 GEMM"))
    assert fallback_lines(rows) == [
        "runtime fallback: 40 layer(s) run dequantized (down.0, down.1, down.2 and 37 more): float 0.1 ms < int8 0.3 ms",
        "runtime fallback: 1 layer(s) run emulated (mid.attn): no int8 GEMM",
    ]
