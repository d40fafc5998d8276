"""What "W4A4" covers on a real architecture: parameter, MAC and BOPs shares per precision.

Builds a model spec's UNet on the ``meta`` device (shapes only: no checkpoint, no memory; the
400M-parameter LDM-4 UNet takes seconds), counts one evaluation's MACs per Conv2d/Linear and the
attention matmuls (``saq_lightning.quant.count_macs``), and applies each policy
(``QuantReport.with_macs``). BOPs as the paper counts them: MACs x weight bits x activation
bits, full precision 32 x 32; the attention matmuls are listed apart and are not in the BOPs.

Policies: the presets as shipped (time embedding, input and output conv at 8 bit; ResBlock
shortcuts and downsample convs full precision) and, for comparison with the paper's W4A4 BOPs,
``w4a4_all`` (the same with ``fp_patterns: []``: shortcuts and downsamplers at 4 bit too).

    .venv/bin/python benchmarks/bops_coverage.py [--model configs/models/ldm4_imagenet.yaml]
        [--policies w4a4,w4a8,w8a8,w4a4_all] [--out benchmarks/results/bops_coverage.json]

Last line: ``<model> w4a4: params_4bit=..% macs_4bit=..% bops=..T fp_bops=..T ratio=..x``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_digits import source_commit

from saq_lightning.models import build_model
from saq_lightning.models.specs import load_model_spec
from saq_lightning.quant import count_macs, quantize_model

ROOT = Path(__file__).resolve().parents[1]
VARIANTS: dict[str, Any] = {"w4a4_all": {"preset": "w4a4", "fp_patterns": []}}


def count_model(model_yaml: Path, policies: list[str]) -> dict[str, Any]:
    spec = load_model_spec(model_yaml)
    with torch.device("meta"):
        model = build_model(spec, load_weights=False)
        x, t = torch.zeros(1, *model.sample_shape), torch.zeros(1)
        cond = model.null_cond(1)
        counts = count_macs(model.unet, lambda: model.conditional_eps(x, t, cond))
        reports = {name: quantize_model(model.unet, VARIANTS.get(name, name), warn=False)[1].with_macs(counts)
                   for name in policies}
    params = sum(p.numel() for p in model.unet.parameters())
    out: dict[str, Any] = {"model": spec.name or spec.kind, "unet_params": params,
                           "sample_shape": list(model.sample_shape),
                           "conv_linear_macs": counts.layer_total, "attention_macs": counts.attention_total,
                           "fp_bops": counts.layer_total * 32 * 32, "policies": {}}
    for name, report in reports.items():
        out["policies"][name] = {"bops": report.bops, "fp_over_bops": report.fp_bops / report.bops,
                                 "shares": [asdict(s) for s in report.precision_shares()]}
    return out


def _label(w: int | None, a: int | None) -> str:
    return "FP" if w is None and a is None else f"W{w or 'fp'}A{a or 'fp'}"


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['model']}: UNet {result['unet_params'] / 1e6:.1f}M parameters, "
          f"sample {result['sample_shape']}, conv/linear {result['conv_linear_macs'] / 1e9:.2f} G MACs "
          f"(FP BOPs {result['fp_bops'] / 1e12:.2f} T), attention matmuls "
          f"{result['attention_macs'] / 1e9:.2f} G MACs (not in the BOPs)")
    head = f"{'policy':<10} {'precision':<9} {'layers':>6} {'params':>8} {'MACs':>8} {'BOPs':>8}"
    print(head)
    print("-" * len(head))
    for name, row in result["policies"].items():
        for s in row["shares"]:
            print(f"{name:<10} {_label(s['weight_bits'], s['act_bits']):<9} {s['layers']:>6} "
                  f"{100 * s['param_share']:>7.1f}% {100 * s['mac_share']:>7.1f}% {100 * s['bop_share']:>7.1f}%")
        print(f"{name:<10} BOPs {row['bops'] / 1e12:.2f} T, {row['fp_over_bops']:.1f}x fewer than FP")


def summary(result: dict[str, Any], policy: str = "w4a4") -> str:
    row = result["policies"].get(policy)
    if row is None:
        return f"{result['model']}: fp_bops={result['fp_bops'] / 1e12:.2f}T"
    four = next((s for s in row["shares"] if (s["weight_bits"], s["act_bits"]) == (4, 4)), None)
    p = 100 * four["param_share"] if four else 0.0
    m = 100 * four["mac_share"] if four else 0.0
    return (f"{result['model']} {policy}: params_4bit={p:.1f}% macs_4bit={m:.1f}% "
            f"bops={row['bops'] / 1e12:.2f}T fp_bops={result['fp_bops'] / 1e12:.2f}T "
            f"ratio={row['fp_over_bops']:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "configs/models/ldm4_imagenet.yaml")
    parser.add_argument("--policies", default="w4a4,w4a8,w8a8,w4a4_all")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bops_coverage.json")
    args = parser.parse_args()
    start = time.perf_counter()
    result = count_model(args.model, [p for p in args.policies.split(",") if p])
    result.update(commit=source_commit(), model_yaml=str(args.model), seconds=time.perf_counter() - start)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    print(summary(result))


if __name__ == "__main__":
    main()
