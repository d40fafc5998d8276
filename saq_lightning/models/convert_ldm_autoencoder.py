"""LDM first stages (``AutoencoderKL`` KL-f8, ``VQModelInterface`` VQ-f4) -> diffusers ``AutoencoderKL`` / ``VQModel``.

The encoder/decoder layout is covered by diffusers' ``convert_ldm_vae_checkpoint`` (traced into
an explicit plan). That helper was written for KL autoencoders: it knows nothing of the VQ
codebook (``quantize.embedding.weight``), which is added here; anything else it skips (a
``quantize.used`` remap buffer, a ``loss.*`` discriminator saved with the first stage) surfaces
as an unknown key when the plan is applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .key_accounting import Plan, Rule, trace_conversion


def autoencoder_plan(
    source_shapes: Mapping[str, torch.Size], class_name: str, config: Mapping[str, Any]
) -> Plan:
    """Plan for original first-stage keys (without the ``first_stage_model.`` prefix)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    def run(probes):
        prefixed = {"first_stage_model." + key: tensor for key, tensor in probes.items()}
        return convert_ldm_vae_checkpoint(prefixed, dict(config))

    plan = trace_conversion(run, source_shapes)
    if class_name == "VQModel":
        plan["quantize.embedding.weight"] = Rule(("quantize.embedding.weight",))
    return plan
