"""What a student's policy covers on its architecture: the quantization report with MAC counts
(parameter, MAC and BOPs shares per precision), as ``export`` prints it.

Counted on a weightless copy of the FP architecture (``torch.device("meta")``): no weights are
read and no memory is taken, the same way ``benchmarks/bops_coverage.py`` counts LDM-4.
"""

from __future__ import annotations

import torch

from saq_lightning.models import ModelSpec, build_model
from saq_lightning.quant import QuantPolicy, QuantReport, count_macs, quantize_model


def coverage_report(spec: ModelSpec, policy: QuantPolicy) -> QuantReport:
    """``policy`` applied to ``spec``'s architecture, with one evaluation's MACs counted."""
    with torch.device("meta"):
        model = build_model(spec, load_weights=False)
        x, t = torch.zeros(1, *model.sample_shape), torch.zeros(1)
        cond = model.null_cond(1)
        counts = count_macs(model.unet, lambda: model.conditional_eps(x, t, cond))
        return quantize_model(model.unet, policy, warn=False)[1].with_macs(counts)
