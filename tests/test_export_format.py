"""An export written by the code before issue 24 (commit 5b740aa, ``tests/data/write_base_export.py``)
loads in today's runtime and computes what it computed then."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saq_lightning.quant.runtime import load_runtime

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("arithmetic", ["fake", "int8"])
def test_an_export_of_the_base_commit_gives_its_outputs(tmp_path, arithmetic):
    export = shutil.copytree(DATA / "base_export", tmp_path / "export")  # the fixture stays untouched
    torch.manual_seed(0)  # the writer's probe inputs (write_base_export.probe_inputs)
    x, t, c = torch.randn(2, 1, 8, 8), torch.tensor([999, 500]), torch.tensor([3, 7])
    # int8_kernel="torch": integer GEMMs on every CPU (auto would take the weight-only path where
    # the probe finds _int_mm slower than fp32, which computes something else)
    runtime = load_runtime(export, arithmetic=arithmetic, device="cpu", int8_kernel="torch")
    got = runtime(x, t, class_labels=c).sample
    want = load_file(str(DATA / "base_export_outputs.safetensors"))[arithmetic]
    # same code path and CPU as the writer: equal up to float summation order on another CPU
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
