"""Translate an original CompVis latent-diffusion config (``model.params``) into diffusers configs.

The ``ldm`` block of a model spec is the ``model.params`` section of the CompVis YAML, copied as
is (``linear_start``, ``unet_config``, ``first_stage_config``, ``cond_stage_config`` ...). These
functions read it; they raise ``NotImplementedError`` for options that the diffusers modules
cannot represent, instead of building a network that silently computes something else.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .unet_heads import FIXED_HEADS_CONFIG_KEY

# CompVis `make_beta_schedule` names -> diffusers / sampling `beta_schedule` names.
# ldm "linear" is linspace(sqrt(start), sqrt(end))**2, which diffusers calls "scaled_linear".
LDM_TO_DIFFUSERS_BETA_SCHEDULE = {
    "linear": "scaled_linear",
    "sqrt_linear": "linear",
    "cosine": "squaredcos_cap_v2",
}

# Stable Diffusion v1.x `model.params` (configs/stable-diffusion/v1-inference.yaml of CompVis).
SD_V1_LDM_PARAMS: dict[str, Any] = {
    "linear_start": 0.00085,
    "linear_end": 0.012,
    "timesteps": 1000,
    "image_size": 64,
    "channels": 4,
    "conditioning_key": "crossattn",
    "scale_factor": 0.18215,
    "unet_config": {
        "target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
        "params": {
            "image_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "model_channels": 320,
            "attention_resolutions": [4, 2, 1],
            "num_res_blocks": 2,
            "channel_mult": [1, 2, 4, 4],
            "num_heads": 8,
            "use_spatial_transformer": True,
            "transformer_depth": 1,
            "context_dim": 768,
            "legacy": False,
        },
    },
    "first_stage_config": {
        "target": "ldm.models.autoencoder.AutoencoderKL",
        "params": {
            "embed_dim": 4,
            "ddconfig": {
                "double_z": True,
                "z_channels": 4,
                "resolution": 256,
                "in_channels": 3,
                "out_ch": 3,
                "ch": 128,
                "ch_mult": [1, 2, 4, 4],
                "num_res_blocks": 2,
                "attn_resolutions": [],
                "dropout": 0.0,
            },
        },
    },
    "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
}

# The text tower of openai/clip-vit-large-patch14 (Stable Diffusion v1's FrozenCLIPEmbedder).
CLIP_VIT_L14_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


def load_ldm_params(ldm: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """``model.params`` as a plain dict: given inline, or read from an original CompVis YAML file."""
    if isinstance(ldm, (str, Path)):
        import yaml

        from .checkpoint_files import require_path

        path = require_path(ldm, "CompVis model config", "the latent-diffusion / stable-diffusion repositories' configs/ folder")
        doc = yaml.safe_load(path.read_text())
        try:
            return copy.deepcopy(doc["model"]["params"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"{path}: expected a CompVis config with model.params") from err
    return copy.deepcopy(dict(ldm))


# ----------------------------------------------------------------------------------- schedule
def schedule_from_ldm(params: Mapping[str, Any]) -> dict[str, Any]:
    """The noise schedule the model was trained with, as a ``schedule_config`` dict."""
    if params.get("parameterization", "eps") != "eps":
        raise NotImplementedError(
            f"parameterization {params['parameterization']!r}: only eps-prediction models are supported"
        )
    name = params.get("beta_schedule", "linear")
    if name not in LDM_TO_DIFFUSERS_BETA_SCHEDULE:
        raise NotImplementedError(f"ldm beta_schedule {name!r} (known: {sorted(LDM_TO_DIFFUSERS_BETA_SCHEDULE)})")
    return {
        "beta_schedule": LDM_TO_DIFFUSERS_BETA_SCHEDULE[name],
        "beta_start": float(params.get("linear_start", 1e-4)),
        "beta_end": float(params.get("linear_end", 2e-2)),
        "num_train_timesteps": int(params.get("timesteps", 1000)),
    }


def betas_from_schedule(schedule: Mapping[str, Any]) -> torch.Tensor:
    """float64 betas of a ``schedule_config`` (used to check a checkpoint's stored ``betas``)."""
    n, b0, b1 = schedule["num_train_timesteps"], schedule["beta_start"], schedule["beta_end"]
    kind = schedule["beta_schedule"]
    if kind == "linear":
        return torch.linspace(b0, b1, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":
        t = torch.arange(n + 1, dtype=torch.float64) / n
        abar = torch.cos((t + 0.008) / 1.008 * torch.pi / 2) ** 2
        return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    raise NotImplementedError(f"beta_schedule {kind!r}")


# ----------------------------------------------------------------------------------- UNet
_UNSUPPORTED_UNET_OPTIONS = {
    "dims": (2, "only 2-D UNets"),
    "conv_resample": (True, "convolutional resampling"),
    "n_embed": (None, "codebook-id prediction heads"),
    "use_new_attention_order": (False, None),  # supported for AttentionBlock UNets, checked there
}


def unet_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``unet_config.params`` with the openaimodel defaults filled in."""
    up = dict(params["unet_config"]["params"])
    defaults = {
        "num_heads": -1,
        "num_head_channels": -1,
        "num_heads_upsample": -1,
        "use_scale_shift_norm": False,
        "resblock_updown": False,
        "use_spatial_transformer": False,
        "transformer_depth": 1,
        "context_dim": None,
        "num_classes": None,
        "dims": 2,
        "conv_resample": True,
        "n_embed": None,
        "use_new_attention_order": False,
        "legacy": True,
    }
    for key, value in defaults.items():
        up.setdefault(key, value)
    for key, (supported, what) in _UNSUPPORTED_UNET_OPTIONS.items():
        if what is not None and up[key] != supported:
            raise NotImplementedError(f"unet_config.params.{key}={up[key]!r}: {what} are supported")
    if up["num_heads_upsample"] not in (-1, up["num_heads"]):
        raise NotImplementedError("num_heads_upsample different from num_heads")
    if up["num_heads"] == -1 and up["num_head_channels"] == -1:
        raise ValueError("unet_config.params: set num_heads or num_head_channels")
    if up["num_classes"] is not None:
        raise NotImplementedError("UNets with their own label embedding (num_classes) are not supported")
    return up


def heads_at(up: Mapping[str, Any], channels: int) -> int:
    """Number of attention heads openaimodel uses at a level with ``channels`` channels."""
    if up["num_head_channels"] != -1:
        return channels // up["num_head_channels"]
    return up["num_heads"]


def crossattn_unet_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """UNet2DConditionModel config for a SpatialTransformer UNet (SD v1, LDM-4 ImageNet).

    Uses diffusers' ``create_unet_diffusers_config_from_ldm`` and fixes what it gets wrong for
    these models: it ignores ``num_head_channels`` (head count per level) and the latent size.
    """
    from diffusers.loaders.single_file_utils import create_unet_diffusers_config_from_ldm

    up = unet_params(params)
    if not up["use_spatial_transformer"]:
        raise ValueError("not a cross-attention (SpatialTransformer) UNet")
    if up["use_scale_shift_norm"] or up["resblock_updown"]:
        raise NotImplementedError("scale-shift norm / resblock up-down in a cross-attention UNet")
    if up["context_dim"] is None:
        raise ValueError("unet_config.params.context_dim is required with use_spatial_transformer")
    ddconfig = params.get("first_stage_config", {}).get("params", {}).get("ddconfig", {"ch_mult": [1]})
    original = {
        "model": {
            "params": {
                "unet_config": {"params": up},
                "first_stage_config": {"params": {"ddconfig": ddconfig}},
            }
        }
    }
    config = create_unet_diffusers_config_from_ldm(original, checkpoint={})
    config["sample_size"] = int(params.get("image_size", up.get("image_size", 64)))
    if up["num_head_channels"] != -1:
        config["attention_head_dim"] = [heads_at(up, c) for c in config["block_out_channels"]]
    else:
        config["attention_head_dim"] = up["num_heads"]  # diffusers' name for the head count here
    return config


def openai_unet_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """UNet2DModel config for an AttentionBlock UNet (LDM LSUN-Churches / LSUN-Bedrooms).

    openaimodel with ``num_heads`` fixes the head *count* at every level (the head width then
    changes with the channels), which ``UNet2DModel.attention_head_dim`` (a width) cannot say;
    that case is stored under the extra config key ``FIXED_HEADS_CONFIG_KEY`` and applied after
    construction (see :mod:`.unet_heads`).
    """
    up = unet_params(params)
    if up["use_spatial_transformer"]:
        raise ValueError("a cross-attention UNet; use crossattn_unet_config")
    mc, mult, attn_ds = up["model_channels"], list(up["channel_mult"]), set(up["attention_resolutions"])
    levels = len(mult)
    updown = bool(up["resblock_updown"])
    down_types, up_types = [], []
    for level in range(levels):
        attn = 2**level in attn_ds
        last = level == levels - 1
        if attn:
            down_types.append("AttnDownBlock2D")
        elif updown and not last:
            down_types.append("ResnetDownsampleBlock2D")
        else:
            down_types.append("DownBlock2D")
    for level in reversed(range(levels)):
        attn = 2**level in attn_ds
        if attn:
            up_types.append("AttnUpBlock2D")
        elif updown and level > 0:
            up_types.append("ResnetUpsampleBlock2D")
        else:
            up_types.append("UpBlock2D")
    config: dict[str, Any] = {
        "sample_size": int(params.get("image_size", up.get("image_size", 64))),
        "in_channels": up["in_channels"],
        "out_channels": up["out_channels"],
        "block_out_channels": [mc * m for m in mult],
        "down_block_types": down_types,
        "up_block_types": up_types,
        "layers_per_block": up["num_res_blocks"],
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "downsample_padding": 1,
        "downsample_type": "resnet" if updown else "conv",
        "upsample_type": "resnet" if updown else "conv",
        "resnet_time_scale_shift": "scale_shift" if up["use_scale_shift_norm"] else "default",
        "add_attention": True,
        # UNetMidBlock2D drops the attention GroupNorm under scale-shift unless told the groups;
        # openaimodel's AttentionBlock always has it.
        "attn_norm_num_groups": 32,
    }
    if up["num_head_channels"] != -1:
        config["attention_head_dim"] = up["num_head_channels"]
    else:
        config["attention_head_dim"] = None
        config[FIXED_HEADS_CONFIG_KEY] = up["num_heads"]
    return config


def unet_class_and_config(params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    up = unet_params(params)
    if up["use_spatial_transformer"]:
        return "UNet2DConditionModel", crossattn_unet_config(params)
    return "UNet2DModel", openai_unet_config(params)


# ----------------------------------------------------------------------------- first stage
def autoencoder_class_and_config(params: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(``AutoencoderKL`` | ``VQModel``, diffusers config) of the first stage; ``None`` in pixel space."""
    fs = params.get("first_stage_config")
    if fs is None or fs == "__is_first_stage__" or isinstance(fs, str):
        return None
    target = str(fs.get("target", ""))
    p = fs["params"]
    dd = p["ddconfig"]
    if dd.get("attn_resolutions"):
        raise NotImplementedError("first stages with attention inside the down/up blocks (attn_resolutions)")
    if not dd.get("resamp_with_conv", True):
        raise NotImplementedError("first stages without convolutional resampling")
    scale = float(params.get("scale_factor", 1.0))
    channels = [dd["ch"] * m for m in dd["ch_mult"]]
    common = {
        "in_channels": dd["in_channels"],
        "out_channels": dd["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": dd["num_res_blocks"],
        "latent_channels": dd["z_channels"],
        "sample_size": dd["resolution"],
        "norm_num_groups": 32,
        "scaling_factor": scale,
    }
    if target.endswith("AutoencoderKL"):
        from diffusers.loaders.single_file_utils import create_vae_diffusers_config_from_ldm

        if not dd.get("double_z", True):
            raise NotImplementedError("KL first stage with double_z=False")
        if p["embed_dim"] != dd["z_channels"]:
            raise NotImplementedError("KL first stage with embed_dim != z_channels")
        original = {"model": {"params": {"first_stage_config": fs, "scale_factor": scale}}}
        config = create_vae_diffusers_config_from_ldm(original, checkpoint={}, scaling_factor=scale)
        config["sample_size"] = dd["resolution"]
        return "AutoencoderKL", config
    if target.endswith(("VQModelInterface", "VQModel")):
        if dd.get("double_z", False):
            raise NotImplementedError("VQ first stage with double_z=True")
        if p.get("remap") is not None:
            raise NotImplementedError("VQ first stage with a remapped codebook")
        config = dict(common, num_vq_embeddings=p["n_embed"], vq_embed_dim=p["embed_dim"])
        return "VQModel", config
    raise NotImplementedError(f"first_stage_config.target {target!r}")


# ----------------------------------------------------------------------------- conditioner
def conditioner_kind(params: Mapping[str, Any]) -> str:
    """``none`` | ``class_context`` (LDM ClassEmbedder) | ``text`` (FrozenCLIPEmbedder)."""
    cs = params.get("cond_stage_config")
    if cs is None or cs == "__is_unconditional__":
        return "none"
    if isinstance(cs, str):
        raise NotImplementedError(f"cond_stage_config {cs!r}")
    key = params.get("conditioning_key", "crossattn")
    if key != "crossattn":
        raise NotImplementedError(f"conditioning_key {key!r}: only cross-attention conditioning is supported")
    target = str(cs.get("target", ""))
    if target.endswith("ClassEmbedder"):
        return "class_context"
    if target.endswith("FrozenCLIPEmbedder"):
        return "text"
    raise NotImplementedError(f"cond_stage_config.target {target!r}")
