"""Loading weights from local files: original CompVis / Stable Diffusion checkpoints, diffusers
folders; and ``build_model(spec)``: every kind of model spec -> :class:`.DiffusionModel`.

Nothing here touches the network: diffusers and transformers are called with
``local_files_only=True`` (and ``HF_HUB_OFFLINE=1`` is set if unset), and a path that is not
a local file or folder raises ``FileNotFoundError`` naming the path and where the file is
normally obtained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from itertools import chain
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import ldm_config
from .builders import (
    LDMArchitecture,
    build_config_only,
    build_digits,
    conditioner_from_block,
    diffusers_class,
    finish,
)
from .checkpoint_files import read_state_dict, require_path
from .conditioners import ClassEmbedder, TextConditioner
from .convert_ldm_autoencoder import autoencoder_plan
from .convert_ldm_checkpoint import split_ldm_state_dict
from .convert_ldm_unet import crossattn_unet_plan
from .convert_openai_unet import openai_unet_plan
from .diffusion_model import SCHEDULE_KEYS, DiffusionModel
from .key_accounting import CheckpointKeyError, ConversionReport, Plan, Rule, apply_plan, load_exact
from .specs import ModelSpec
from .unet_heads import apply_config_heads

DEFAULT_SOURCES = {
    "compvis_ldm": "the CompVis latent-diffusion model zoo (https://github.com/CompVis/latent-diffusion#model-zoo)",
    "sd_single_file": "the Hugging Face repository CompVis/stable-diffusion-v-1-4-original (sd-v1-4.ckpt)",
    "diffusers_folder": "a diffusers `save_pretrained` / `DiffusionPipeline.save_pretrained` folder",
}
CLIP_POSITION_IDS = "transformer.text_model.embeddings.position_ids"


def set_offline() -> None:
    """Make any Hugging Face library call in this process local-only (unless the user set otherwise)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DIFFUSERS_OFFLINE"):
        os.environ.setdefault(var, "1")


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    from transformers import CLIPTokenizer

    set_offline()
    folder = require_path(path, "CLIP tokenizer", "the tokenizer/ folder of a Stable Diffusion pipeline "
                          "(Hugging Face CompVis/stable-diffusion-v1-4) or openai/clip-vit-large-patch14", folder=True)
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


# ----------------------------------------------------------------------------- CompVis checkpoints
def _materialize(
    factory: Callable[[], nn.Module],
    make_plan: Callable[[Mapping[str, torch.Size]], Plan],
    source: Mapping[str, Tensor],
    what: str,
    report: ConversionReport,
) -> nn.Module:
    """Build a module without initialising it, fill it through an audited plan."""
    with torch.device("meta"):
        module = factory()
    target_shapes = {k: v.shape for k, v in module.state_dict().items()}
    plan = make_plan({k: v.shape for k, v in source.items()})
    converted = {k: v.contiguous() for k, v in apply_plan(plan, source, target_shapes, what).items()}
    load_exact(module, converted, what, assign=True)
    if any(t.is_meta for t in chain(module.parameters(), module.buffers())):
        module = factory()  # it has non-persistent buffers: build it for real
        load_exact(module, converted, what)
    report.converted[what] = len(source)  # apply_plan checked that each one was used
    return module


def _conditioner_plan(conditioner: nn.Module, source_shapes: Mapping[str, torch.Size]) -> Plan:
    targets = conditioner.state_dict().keys()
    if isinstance(conditioner, ClassEmbedder):
        return {"embedding.weight": Rule(("embedding.weight",))}
    if isinstance(conditioner, TextConditioner):
        # FrozenCLIPEmbedder keeps a transformers CLIPTextModel under `transformer`; recent
        # transformers versions dropped its `text_model.` level, so map by the part after it.
        plan: Plan = {}
        for key in targets:
            inner = key[len("text_encoder."):]
            inner = inner.removeprefix("text_model.")
            plan[key] = Rule((f"transformer.text_model.{inner}",))
        return plan
    raise TypeError(f"no checkpoint mapping for {type(conditioner).__name__}")


def load_compvis_model(spec: ModelSpec, load_weights: bool = True) -> DiffusionModel:
    """``compvis_ldm`` / ``sd_single_file``: an original ``LatentDiffusion`` checkpoint -> DiffusionModel."""
    default = ldm_config.SD_V1_LDM_PARAMS if spec.kind == "sd_single_file" else None
    arch = LDMArchitecture.from_spec(spec, default)
    schedule = dict(arch.schedule, **(spec.schedule or {}))
    configured_scale = spec.latent_scale_factor
    if not load_weights:  # architecture only: needs no file at all
        scale = configured_scale or float(arch.params.get("scale_factor", 1.0))
        return finish(arch.build_unet(), schedule, spec, arch.build_conditioner(), arch.build_autoencoder(), scale)
    tokenizer = load_tokenizer(spec.tokenizer) if spec.tokenizer else None

    path = require_path(spec.weights, f"checkpoint of model {spec.name or spec.kind!r}", spec.weights_source or DEFAULT_SOURCES[spec.kind])
    parts = split_ldm_state_dict(read_state_dict(path), schedule, use_ema=spec.use_ema)
    report = parts.report
    if arch.unet_class == "UNet2DConditionModel":
        unet_plan = lambda shapes: crossattn_unet_plan(shapes, arch.unet_config)
    else:
        unet_plan = lambda shapes: openai_unet_plan(arch.params)
    unet = _materialize(arch.build_unet, unet_plan, parts.unet, f"{path.name}: UNet", report)

    autoencoder = None
    if arch.autoencoder is not None:
        ae_class, ae_config = arch.autoencoder
        autoencoder = _materialize(
            arch.build_autoencoder, lambda s: autoencoder_plan(s, ae_class, ae_config),
            parts.first_stage, f"{path.name}: first stage", report,
        )
    elif parts.first_stage:
        raise CheckpointKeyError(f"{path}: first_stage_model.* keys but the config has no first stage")

    conditioner = None
    cond_source = dict(parts.cond_stage)
    if arch.conditioner_kind == "text" and CLIP_POSITION_IDS in cond_source:
        ids = cond_source.pop(CLIP_POSITION_IDS)
        if not torch.equal(ids.flatten().long(), torch.arange(ids.numel())):
            raise ValueError(f"{path}: {CLIP_POSITION_IDS} is not 0..{ids.numel() - 1}")
        report.discard(["cond_stage_model." + CLIP_POSITION_IDS], "CLIP position ids (a constant buffer)")
    if arch.conditioner_kind != "none":
        with torch.device("meta"):
            probe = arch.build_conditioner()
        conditioner = _materialize(
            lambda: arch.build_conditioner(tokenizer), lambda s: _conditioner_plan(probe, s),
            cond_source, f"{path.name}: conditioner", report,
        )
    elif cond_source:
        raise CheckpointKeyError(f"{path}: cond_stage_model.* keys but the config is unconditional")

    scale = _latent_scale(parts.scale_factor, configured_scale, arch.params, path)
    model = finish(unet, schedule, spec, conditioner, autoencoder, scale)
    model.conversion_report = report
    return model


def _latent_scale(from_ckpt: float | None, configured: float | None, params: Mapping[str, Any], path: Path) -> float:
    if from_ckpt is not None:
        if configured is not None and abs(configured - from_ckpt) > 1e-6 * max(1.0, abs(from_ckpt)):
            raise ValueError(
                f"{path}: the checkpoint's scale_factor is {from_ckpt}, the spec says latent_scale_factor={configured}"
            )
        return from_ckpt
    if configured is not None:
        return configured
    if params.get("scale_by_std"):
        raise ValueError(f"{path}: scale_by_std model without a scale_factor buffer; set latent_scale_factor")
    return float(params.get("scale_factor", 1.0))


# ----------------------------------------------------------------------------- diffusers folders
def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _load_component(folder: Path, subfolder: str | None, load_weights: bool) -> nn.Module:
    config_dir = folder / subfolder if subfolder else folder
    config = _read_json(config_dir / "config.json")
    class_name = config.get("_class_name")
    cls = diffusers_class(class_name)
    if not load_weights:
        module = cls.from_config(config)
    else:
        try:
            module = cls.from_pretrained(str(folder), subfolder=subfolder, local_files_only=True)
        except OSError as err:
            raise FileNotFoundError(f"{config_dir}: no loadable {class_name} weights ({err})") from err
    return apply_config_heads(module)


def _schedule_from_scheduler(folder: Path) -> dict[str, Any]:
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return {}
    cfg = _read_json(path)
    if cfg.get("prediction_type", "epsilon") != "epsilon":
        raise NotImplementedError(f"{path}: prediction_type {cfg['prediction_type']!r}; only epsilon models are supported")
    defaults = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_train_timesteps": 1000}
    return {k: cfg.get(k, defaults[k]) for k in SCHEDULE_KEYS}


def load_diffusers_folder(spec: ModelSpec, load_weights: bool = True) -> DiffusionModel:
    """``diffusers_folder``: a model folder (``config.json``) or a pipeline folder (``model_index.json``)."""
    set_offline()
    root = require_path(spec.weights, f"diffusers folder of model {spec.name or spec.kind!r}",
                        spec.weights_source or DEFAULT_SOURCES["diffusers_folder"], folder=True)
    if (root / "model_index.json").is_file():
        index = _read_json(root / "model_index.json")
        unet = _load_component(root, "unet", load_weights)
        autoencoder = None
        for sub in ("vae", "vqvae"):
            if sub in index:
                autoencoder = _load_component(root, sub, load_weights)
        text_encoder = tokenizer = None
        if "text_encoder" in index:
            from transformers import CLIPTextConfig, CLIPTextModel

            if load_weights:
                text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), local_files_only=True)
            else:
                text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(root / "text_encoder"), local_files_only=True))
        if spec.tokenizer:
            tokenizer = load_tokenizer(spec.tokenizer)
        elif "tokenizer" in index and (root / "tokenizer").is_dir():
            tokenizer = load_tokenizer(root / "tokenizer")
        schedule = _schedule_from_scheduler(root)
    elif (root / "config.json").is_file():
        unet = _load_component(root, None, load_weights)
        autoencoder = text_encoder = tokenizer = None
        schedule = {}
    else:
        raise FileNotFoundError(f"{root}: neither model_index.json (pipeline) nor config.json (model) found")
    if not hasattr(unet.config, "in_channels") or type(unet).__name__ not in ("UNet2DModel", "UNet2DConditionModel"):
        raise ValueError(f"{root}: expected a UNet, found {type(unet).__name__}")
    conditioner = conditioner_from_block(spec.conditioning, unet, text_encoder, tokenizer)
    scale = spec.latent_scale_factor
    if scale is None:
        is_kl = autoencoder is not None and type(autoencoder).__name__ == "AutoencoderKL"
        scale = float(autoencoder.config.scaling_factor) if is_kl else 1.0
    return finish(unet, schedule, spec, conditioner, autoencoder, scale)


# --------------------------------------------------------------------------- registry
BUILDERS: Mapping[str, Callable[[ModelSpec, bool], DiffusionModel]] = {
    "digits": build_digits,
    "config_only": build_config_only,
    "compvis_ldm": load_compvis_model,
    "sd_single_file": load_compvis_model,
    "diffusers_folder": load_diffusers_folder,
}


def build_model(spec: ModelSpec | Mapping[str, Any], load_weights: bool = True) -> DiffusionModel:
    """Build the :class:`.DiffusionModel` a spec describes.

    ``load_weights=False`` builds the architecture only (random weights; instant and memory-free
    under ``with torch.device("meta"):``), e.g. to count parameters without the checkpoint.
    """
    if not isinstance(spec, ModelSpec):
        spec = ModelSpec(**dict(spec))
    if spec.kind not in BUILDERS:
        raise ValueError(f"unknown model kind {spec.kind!r} (expected one of {sorted(BUILDERS)})")
    return BUILDERS[spec.kind](spec, load_weights)
