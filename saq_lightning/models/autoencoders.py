"""Encode/decode through a diffusers first stage (``AutoencoderKL`` or ``VQModel``), unscaled."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def encode_images(
    autoencoder: nn.Module, images: Tensor, sample_posterior: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    """First-stage latents of images in ``[-1, 1]`` (before the latent scale factor)."""
    images = images.to(next(autoencoder.parameters()).dtype)
    out = autoencoder.encode(images)
    if hasattr(out, "latent_dist"):  # AutoencoderKL
        dist = out.latent_dist
        return dist.sample(generator) if sample_posterior else dist.mode()
    if hasattr(out, "latents"):  # VQModel: pre-quantization latents, as LDM's VQModelInterface.encode
        return out.latents
    raise TypeError(f"{type(autoencoder).__name__}.encode returned {type(out).__name__}")


def decode_latents(autoencoder: nn.Module, latents: Tensor) -> Tensor:
    """Images from first-stage latents; ``VQModel`` quantizes them to the codebook first."""
    latents = latents.to(next(autoencoder.parameters()).dtype)
    return autoencoder.decode(latents).sample
