"""SpatialTransformer UNet (Stable Diffusion v1, LDM-4 ImageNet cin256-v2) -> ``UNet2DConditionModel``.

The key layout is the one diffusers' ``convert_ldm_unet_checkpoint`` covers; it is traced into an
explicit plan (:func:`.key_accounting.trace_conversion`) so that every original key is accounted
for - the helper itself skips keys it does not recognise (``label_emb`` of ADM-style class
embeddings when the config has none, ``id_predictor`` heads, stray buffers) without a word.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .key_accounting import Plan, trace_conversion


def crossattn_unet_plan(source_shapes: Mapping[str, torch.Size], config: Mapping[str, Any]) -> Plan:
    """Plan for original UNet keys (without the ``model.diffusion_model.`` prefix)."""
    from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint

    def run(probes):
        prefixed = {LDM_UNET_KEY + key: tensor for key, tensor in probes.items()}
        return convert_ldm_unet_checkpoint(prefixed, dict(config))

    return trace_conversion(run, source_shapes)
