"""Shared by the config tests: parse a shipped config without building anything, and build its
teacher and quantized student on the ``meta`` device (the big models do not fit this machine)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from saq_lightning.lightning.run_cli import read_run_config
from saq_lightning.models import ModelSpec, build_model
from saq_lightning.quant import as_policy, quantize_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def parse(name: str):
    return read_run_config(["--config", str(CONFIGS / name)]).config


def meta_student(init: dict[str, Any], policy: Any = None):
    """``(teacher model, student)`` of a config's ``model.init_args`` dict, on the meta device."""
    spec = ModelSpec(**{k: v for k, v in init["teacher"].items() if k != "__path__"})
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Churches has no downsampler convs to match
        model = build_model(spec, load_weights=False)
        student, _ = quantize_model(model.unet, policy if policy is not None else as_policy(init["policy"]))
    return model, student
