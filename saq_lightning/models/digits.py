"""The embedded default teacher: a small class-conditional UNet on scikit-learn's 8x8 digits.

The weights ship inside the package (``saq_lightning/weights/digits_teacher.safetensors``) with a
JSON sidecar holding everything needed to rebuild the model (UNet config, noise schedule, how it
was trained), so the default runs with no training and no download.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file, save_file

NUM_CLASSES = 10
NULL_CLASS = 10  # the extra class embedding used as the unconditional input for CFG

DIGITS_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 1,
    "out_channels": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "attention_head_dim": 16,
    "num_class_embeds": NUM_CLASSES + 1,
}

# DDPM's 1000-step linear-beta schedule (diffusers' DDPMScheduler config keys).
DIGITS_SCHEDULE_CONFIG: dict[str, Any] = {
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "num_train_timesteps": 1000,
}


def build_digits_unet(config: dict[str, Any] | None = None) -> UNet2DModel:
    """A fresh (randomly initialised) digits UNet; ``config`` defaults to ``DIGITS_UNET_CONFIG``."""
    return UNet2DModel(**copy.deepcopy(config or DIGITS_UNET_CONFIG))


def default_teacher_path() -> Path:
    """The shipped teacher weights inside the installed package."""
    return Path(str(resources.files("saq_lightning") / "weights" / "digits_teacher.safetensors"))


def sidecar_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def check_export_target(path: str | Path) -> None:
    """Raise if writing weights to ``path`` would replace an existing weights or sidecar file."""
    for existing in (Path(path), sidecar_path(path)):
        if existing.exists():
            raise FileExistsError(
                f"{existing} already exists; pass overwrite=True (CLI: --model.overwrite_export true) "
                "to replace it"
            )


def save_weights_with_sidecar(
    state_dict: dict[str, torch.Tensor],
    path: str | Path,
    meta: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write ``path`` (safetensors) and its ``.json`` sidecar; refuse to replace existing files."""
    path = Path(path)
    side = sidecar_path(path)
    if not overwrite:
        check_export_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    side.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def load_digits_teacher(
    path: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[UNet2DModel, dict[str, Any]]:
    """Load the digits teacher (frozen, eval mode) and its sidecar metadata.

    ``meta`` has ``unet_config`` and ``schedule_config`` (plain dicts) and training details.
    """
    path = Path(path) if path is not None else default_teacher_path()
    side = sidecar_path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"digits teacher weights not found at {path}; the package ships them at "
            f"{default_teacher_path()}, or reproduce them with "
            "`python -m saq_lightning fit --config configs/digits_teacher.yaml`"
        )
    if not side.is_file():
        raise FileNotFoundError(f"{side} (model config written next to the weights) is missing")
    meta = json.loads(side.read_text())
    for key in ("unet_config", "schedule_config"):
        if key not in meta:
            raise ValueError(f"{side}: field '{key}' is missing (expected a dict)")
    unet = build_digits_unet(meta["unet_config"])
    state = load_file(str(path), device=str(device))
    try:
        unet.load_state_dict(state, strict=True)
    except RuntimeError as err:  # missing/unexpected keys or shape mismatches
        raise ValueError(f"{path}: weights do not match the UNet config in {side}: {err}") from None
    unet.to(device).eval().requires_grad_(False)
    return unet, meta
