"""``ModelSpec``: the plain-data description of a model that configs hold (LightningCLI / jsonargparse).

A spec says where the weights come from (``kind`` + ``weights``) and what the architecture is.
``build_model(spec)`` (:mod:`.loading`) turns it into a :class:`.DiffusionModel`. The YAML files
in ``configs/models/`` are specs; read one with :func:`load_model_spec`, or give it to any
``ModelSpec``-typed argument of a LightningCLI config (``teacher: configs/models/sd14.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ModelKind = Literal["digits", "diffusers_folder", "compvis_ldm", "sd_single_file", "config_only"]
DType = Literal["float32", "float16", "bfloat16"]


@dataclass
class ModelSpec:
    """Where a diffusion model's weights are and what its architecture is.

    Attributes:
        kind: ``digits`` - the embedded 8x8 digits teacher (``weights``: its .safetensors, default
            the one shipped in the package); ``diffusers_folder`` - a diffusers model folder
            (``config.json`` + weights, e.g. from ``save_pretrained``) or pipeline folder
            (``model_index.json``, ``unet/``, ``vae/`` or ``vqvae/``, ``text_encoder/``,
            ``tokenizer/``, ``scheduler/``); ``compvis_ldm`` - an original CompVis latent-diffusion
            checkpoint (``.ckpt`` / ``.safetensors``) described by ``ldm``; ``sd_single_file`` - a
            Stable Diffusion v1.x single-file checkpoint (``ldm`` defaults to SD v1's config);
            ``config_only`` - the architecture of ``ldm`` or ``diffusers`` with random weights.
        name: label used in logs.
        weights: path of the weight file or folder; ``~`` and ``$VARS`` are expanded, relative
            paths are taken from the working directory.
        weights_source: where the file is normally obtained (shown when it is missing).
        ldm: the ``model.params`` section of the original CompVis YAML (inline), or a path to
            that YAML.
        diffusers: for ``config_only`` without ``ldm``: ``{unet_class, unet, autoencoder_class,
            autoencoder}`` (diffusers class names and config dicts).
        conditioning: for ``diffusers_folder`` / ``config_only`` with ``diffusers``:
            ``{type: none | class_labels | class_context | text, num_classes, null_class, embed_dim}``.
        schedule: training noise schedule ``{beta_schedule, beta_start, beta_end,
            num_train_timesteps}``; overrides the one from ``ldm`` or a pipeline's scheduler,
            required for a bare UNet folder.
        latent_scale_factor: multiplies first-stage latents; default from the checkpoint's
            ``scale_factor`` buffer, else ``ldm.scale_factor``, else 1.
        use_ema: load the EMA copy of the UNet from a CompVis checkpoint.
        text_encoder_config: ``transformers.CLIPTextConfig`` fields of the text encoder of an LDM
            checkpoint (default: CLIP ViT-L/14, Stable Diffusion v1).
        tokenizer: local folder of the CLIP tokenizer (``vocab.json`` + ``merges.txt``); only
            needed to turn prompt strings into token ids.
        sampling: the sampling settings the model is evaluated with: ``solver``, ``steps``,
            ``guidance_scale``, ``eta``.
        dtype: parameter dtype after loading.
    """

    kind: ModelKind = "digits"
    name: str = ""
    weights: str | None = None
    weights_source: str = ""
    ldm: dict[str, Any] | str | None = None
    diffusers: dict[str, Any] | None = None
    conditioning: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    latent_scale_factor: float | None = None
    use_ema: bool = False
    text_encoder_config: dict[str, Any] | None = None
    tokenizer: str | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    dtype: DType = "float32"


def load_model_spec(path: str | Path) -> ModelSpec:
    """Parse a model YAML (``configs/models/*.yaml``) the way LightningCLI does (jsonargparse)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--spec", type=ModelSpec)
    cfg = parser.parse_args(["--spec", str(path)])
    return parser.instantiate_classes(cfg).spec
