"""Split an original CompVis ``LatentDiffusion`` state dict into its parts, accounting for every key.

A CompVis checkpoint's ``state_dict`` holds

* ``model.diffusion_model.*`` - the UNet;
* ``model_ema.*`` - an EMA copy of the UNet with dot-less names (``model_ema.diffusion_modelinput_blocks00weight``)
  and its ``decay`` / ``num_updates`` counters (models trained with ``use_ema``);
* ``first_stage_model.*`` - the autoencoder; ``cond_stage_model.*`` - the conditioner;
* the DDPM schedule buffers (``betas``, ``alphas_cumprod``, ...), checked against the configured
  schedule, and ``scale_factor`` (models trained with ``scale_by_std``), the latent scale.

Anything else raises :class:`.key_accounting.CheckpointKeyError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .key_accounting import CheckpointKeyError, ConversionReport, _preview, strip_prefix
from .ldm_config import betas_from_schedule

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
FIRST_STAGE_PREFIX = "first_stage_model."
COND_STAGE_PREFIX = "cond_stage_model."
EMA_COUNTERS = ("model_ema.decay", "model_ema.num_updates")
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "lvlb_weights",
    "logvar",  # per-timestep loss weighting of LDM training
)


@dataclass
class LDMParts:
    """The original tensors of each component (prefixes stripped) and what was set aside."""

    unet: dict[str, Tensor]
    first_stage: dict[str, Tensor]
    cond_stage: dict[str, Tensor]
    scale_factor: float | None
    report: ConversionReport = field(default_factory=ConversionReport)


def split_ldm_state_dict(
    state: Mapping[str, Tensor], schedule: Mapping[str, Any], use_ema: bool = False
) -> LDMParts:
    """Split ``state`` (a CompVis ``LatentDiffusion`` state dict) and check its schedule buffers.

    ``use_ema`` selects the EMA copy of the UNet (error if the checkpoint has none); otherwise the
    EMA copy, if present, is set aside. The CompVis sampling scripts use ``model.diffusion_model``.
    """
    report = ConversionReport()
    unet = strip_prefix(state, UNET_PREFIX)
    first_stage = strip_prefix(state, FIRST_STAGE_PREFIX)
    cond_stage = strip_prefix(state, COND_STAGE_PREFIX)
    if not unet:
        raise CheckpointKeyError(f"no {UNET_PREFIX}* keys: not a CompVis LatentDiffusion checkpoint")

    ema = {k: v for k, v in state.items() if k.startswith(EMA_PREFIX) and k not in EMA_COUNTERS}
    report.discard([k for k in EMA_COUNTERS if k in state], "EMA bookkeeping counter")
    if ema:
        by_flat_name = {EMA_PREFIX + ("diffusion_model." + k).replace(".", ""): k for k in unet}
        if len(by_flat_name) != len(unet):
            raise CheckpointKeyError("UNet key names collide once dots are removed: EMA keys are ambiguous")
        orphans = set(ema) - set(by_flat_name)
        if orphans:
            raise CheckpointKeyError(f"EMA keys that match no UNet key: {_preview(orphans)}")
        if use_ema:
            without = set(by_flat_name) - set(ema)
            if without:
                raise CheckpointKeyError(f"use_ema: UNet keys without an EMA copy: {_preview(by_flat_name[k] for k in without)}")
            report.discard([UNET_PREFIX + k for k in unet], "non-EMA UNet weights (use_ema=true)")
            unet = {by_flat_name[k]: v for k, v in ema.items()}
        else:
            report.discard(ema, "EMA copy of the UNet (use_ema=false)")
    elif use_ema:
        raise CheckpointKeyError("use_ema=true but the checkpoint has no model_ema.* weights")

    scale_factor = None
    if "scale_factor" in state:
        scale_factor = float(state["scale_factor"])
        report.discard(["scale_factor"], "latent scale factor (read into the model)")

    present = [k for k in SCHEDULE_BUFFERS if k in state]
    if "betas" in state:
        _check_betas(state["betas"], schedule)
    report.discard(present, "DDPM schedule buffer (betas checked against the configured schedule)")

    known_prefixes = (UNET_PREFIX, EMA_PREFIX, FIRST_STAGE_PREFIX, COND_STAGE_PREFIX)
    unknown = [
        k for k in state
        if not k.startswith(known_prefixes) and k not in SCHEDULE_BUFFERS and k != "scale_factor"
    ]
    if unknown:
        raise CheckpointKeyError(f"checkpoint keys this converter does not know: {_preview(unknown)}")
    return LDMParts(unet, first_stage, cond_stage, scale_factor, report)


def _check_betas(betas: Tensor, schedule: Mapping[str, Any]) -> None:
    expected = betas_from_schedule(schedule)
    got = betas.detach().to("cpu", torch.float64).flatten()
    if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-7):
        raise ValueError(
            f"the checkpoint's betas do not match the configured schedule {dict(schedule)} "
            f"(checkpoint: {got.numel()} steps, beta[0]={got[0].item():.6g}, beta[-1]={got[-1].item():.6g}); "
            "fix linear_start / linear_end / timesteps in the config"
        )
