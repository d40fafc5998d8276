"""Architectures from config, and the two spec kinds built without a checkpoint file of their own
(``digits``, ``config_only``); ``build_model`` (:mod:`.loading`) dispatches every kind.

Architectures are built from config (diffusers classes; nothing is downloaded). Building inside
``with torch.device("meta"):`` with ``load_weights=False`` gives the full-size architecture
without memory (parameter counts, layer policies). Built models are in eval mode with
``requires_grad=False`` (a frozen teacher); training code unfreezes what it trains.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import ldm_config
from .conditioners import ClassEmbedder, ClassLabelConditioner, TextConditioner
from .diffusion_model import SCHEDULE_KEYS, DiffusionModel
from .specs import ModelSpec
from .unet_heads import FIXED_HEADS_CONFIG_KEY, set_attention_heads

DIFFUSERS_CLASS_NAMES = ("UNet2DModel", "UNet2DConditionModel", "AutoencoderKL", "VQModel")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def diffusers_class(name: str) -> type:
    if name not in DIFFUSERS_CLASS_NAMES:
        raise ValueError(f"unsupported diffusers class {name!r} (supported: {DIFFUSERS_CLASS_NAMES})")
    import diffusers

    return getattr(diffusers, name)


def build_diffusers_module(class_name: str, config: Mapping[str, Any]) -> nn.Module:
    """A diffusers module from a config dict; unknown config keys raise (typos are errors here)."""
    config = {k: copy.deepcopy(v) for k, v in config.items() if not k.startswith("_")}
    heads = config.pop(FIXED_HEADS_CONFIG_KEY, None)
    cls = diffusers_class(class_name)
    try:
        module = cls(**config)
    except TypeError as err:
        raise ValueError(f"{class_name} config: {err}") from err
    if heads:
        set_attention_heads(module, int(heads))
    return module


def sample_shape_of(unet: nn.Module) -> tuple[int, int, int]:
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(unet.config.in_channels), int(h), int(w))


def finish(
    unet: nn.Module,
    schedule: Mapping[str, Any],
    spec: ModelSpec,
    conditioner: nn.Module | None = None,
    autoencoder: nn.Module | None = None,
    latent_scale_factor: float = 1.0,
) -> DiffusionModel:
    """Assemble, apply ``spec.dtype``, freeze and set eval mode."""
    schedule = dict(schedule)
    if spec.schedule:
        schedule.update(spec.schedule)
    missing = [k for k in SCHEDULE_KEYS if k not in schedule]
    if missing:
        raise ValueError(f"model spec {spec.name!r}: schedule lacks {missing}; set `schedule:` in the spec")
    model = DiffusionModel(
        unet,
        schedule,
        sample_shape_of(unet),
        conditioner=conditioner,
        autoencoder=autoencoder,
        latent_scale_factor=latent_scale_factor,
        sampling_defaults=spec.sampling,
        name=spec.name or spec.kind,
    )
    return model.to(DTYPES[spec.dtype]).eval().requires_grad_(False)


# --------------------------------------------------------------------------- LDM architectures
@dataclass
class LDMArchitecture:
    """The diffusers modules an original CompVis ``model.params`` describes."""

    params: dict[str, Any]
    unet_class: str
    unet_config: dict[str, Any]
    autoencoder: tuple[str, dict[str, Any]] | None
    conditioner_kind: str
    text_encoder_config: dict[str, Any]
    null_class: int | None = None

    @classmethod
    def from_spec(cls, spec: ModelSpec, default_params: Mapping[str, Any] | None = None) -> LDMArchitecture:
        if spec.ldm is None and default_params is None:
            raise ValueError(f"model spec {spec.name!r} (kind {spec.kind}) needs `ldm:` (the CompVis model.params)")
        params = ldm_config.load_ldm_params(spec.ldm if spec.ldm is not None else default_params)  # type: ignore[arg-type]
        unet_class, unet_config = ldm_config.unet_class_and_config(params)
        null_class = (spec.conditioning or {}).get("null_class")
        return cls(
            params=params,
            unet_class=unet_class,
            unet_config=unet_config,
            autoencoder=ldm_config.autoencoder_class_and_config(params),
            conditioner_kind=ldm_config.conditioner_kind(params),
            text_encoder_config=dict(spec.text_encoder_config or ldm_config.CLIP_VIT_L14_TEXT_CONFIG),
            null_class=null_class,
        )

    @property
    def schedule(self) -> dict[str, Any]:
        return ldm_config.schedule_from_ldm(self.params)

    def build_unet(self) -> nn.Module:
        return build_diffusers_module(self.unet_class, self.unet_config)

    def build_autoencoder(self) -> nn.Module | None:
        return build_diffusers_module(*self.autoencoder) if self.autoencoder else None

    def build_conditioner(self, tokenizer: Any = None) -> nn.Module | None:
        if self.conditioner_kind == "none":
            return None
        cs_params = self.params["cond_stage_config"].get("params", {}) or {}
        if self.conditioner_kind == "class_context":
            return ClassEmbedder(cs_params["n_classes"], cs_params["embed_dim"], self.null_class)
        from transformers import CLIPTextConfig, CLIPTextModel

        encoder = CLIPTextModel(CLIPTextConfig(**self.text_encoder_config))
        return TextConditioner(encoder, max_length=int(cs_params.get("max_length", 77)), tokenizer=tokenizer)


# --------------------------------------------------------------------------- conditioning blocks
def conditioner_from_block(
    block: Mapping[str, Any] | None,
    unet: nn.Module,
    text_encoder: nn.Module | None = None,
    tokenizer: Any = None,
    text_encoder_config: Mapping[str, Any] | None = None,
) -> nn.Module | None:
    """The conditioner a ``conditioning:`` block (diffusers folders, ``config_only``) describes."""
    block = dict(block or {})
    kind = block.get("type", "text" if text_encoder is not None else "none")
    if kind == "none":
        if getattr(unet.config, "num_class_embeds", None):
            raise ValueError(
                "the UNet has a class embedding: set `conditioning: {type: class_labels, null_class: <index>}`"
            )
        return None
    if kind == "class_labels":
        num = block.get("num_classes", getattr(unet.config, "num_class_embeds", None))
        if num is None or "null_class" not in block:
            raise ValueError("conditioning type class_labels needs num_classes (or a UNet with num_class_embeds) and null_class")
        return ClassLabelConditioner(int(num), int(block["null_class"]))
    if kind == "class_context":
        return ClassEmbedder(int(block["num_classes"]), int(block["embed_dim"]), block.get("null_class"))
    if kind == "text":
        if text_encoder is None:
            from transformers import CLIPTextConfig, CLIPTextModel

            text_encoder = CLIPTextModel(CLIPTextConfig(**(text_encoder_config or ldm_config.CLIP_VIT_L14_TEXT_CONFIG)))
        return TextConditioner(text_encoder, max_length=int(block.get("max_length", 77)), tokenizer=tokenizer)
    raise ValueError(f"conditioning type {kind!r} (expected none | class_labels | class_context | text)")


# --------------------------------------------------------------------------- kinds
def build_digits(spec: ModelSpec, load_weights: bool) -> DiffusionModel:
    from .digits import DIGITS_SCHEDULE_CONFIG, NULL_CLASS, build_digits_unet, load_digits_teacher

    if load_weights:
        unet, meta = load_digits_teacher(spec.weights)
        schedule = meta["schedule_config"]
    else:
        unet, schedule = build_digits_unet(), DIGITS_SCHEDULE_CONFIG
    conditioner = ClassLabelConditioner(int(unet.config.num_class_embeds), NULL_CLASS)
    return finish(unet, schedule, spec, conditioner=conditioner)


def build_config_only(spec: ModelSpec, load_weights: bool) -> DiffusionModel:
    if spec.ldm is not None:
        arch = LDMArchitecture.from_spec(spec)
        scale = spec.latent_scale_factor or float(arch.params.get("scale_factor", 1.0))
        return finish(arch.build_unet(), arch.schedule, spec, arch.build_conditioner(), arch.build_autoencoder(), scale)
    block = spec.diffusers
    if not block or "unet_class" not in block or "unet" not in block:
        raise ValueError("config_only needs `ldm:` or `diffusers: {unet_class, unet, ...}`")
    unet = build_diffusers_module(block["unet_class"], block["unet"])
    autoencoder = None
    if block.get("autoencoder_class"):
        autoencoder = build_diffusers_module(block["autoencoder_class"], block.get("autoencoder", {}))
    scale = spec.latent_scale_factor
    if scale is None:
        scale = float(autoencoder.config.scaling_factor) if autoencoder is not None else 1.0
    conditioner = conditioner_from_block(spec.conditioning, unet, text_encoder_config=spec.text_encoder_config)
    return finish(unet, spec.schedule or {}, spec, conditioner, autoencoder, scale)
