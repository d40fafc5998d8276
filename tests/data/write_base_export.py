"""Writes ``base_export/`` and ``base_export_outputs.safetensors``: the naive W4A4 digits student
(8 calibration trajectories, min-max ranges) exported by the code at a given commit, and its
runtime outputs (fake and int8 arithmetic) on a fixed input. The fixture of
``tests/test_export_format.py`` (an export written before issue 24 loads and computes unchanged).

    git archive <commit> saq_lightning | tar -x -C /tmp/base
    PYTHONPATH=/tmp/base python tests/data/write_base_export.py tests/data

Written at commit 5b740aa (where the loader was ``saq_lightning.lightning.student_loading``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from saq_lightning.lightning.student_loading import load_sampling_model

from saq_lightning.models import ModelSpec
from saq_lightning.quant import export_student
from saq_lightning.quant.runtime import load_runtime


def probe_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two noisy digits states, their model timesteps and class labels."""
    torch.manual_seed(0)
    return torch.randn(2, 1, 8, 8), torch.tensor([999, 500]), torch.tensor([3, 7])


def main(folder: Path) -> None:
    net = load_sampling_model(ModelSpec(kind="digits"), "naive:w4a4", calibration_samples=8,
                              calibration_method="minmax")
    export = export_student(net.unet, folder / "base_export")
    x, t, c = probe_inputs()
    outputs = {arithmetic: load_runtime(export, arithmetic=arithmetic, device="cpu")(x, t, class_labels=c)
               .sample.contiguous() for arithmetic in ("fake", "int8")}
    save_file(outputs, str(folder / "base_export_outputs.safetensors"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
