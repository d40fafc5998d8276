"""CLIP score of text-to-image samples through open_clip, with local weights only.

``CLIP score = max(0, mean_i 100 * cos(E_img(x_i), E_txt(p_i)))`` - torchmetrics' ``CLIPScore``
definition (Hessel et al.'s CLIPScore uses ``2.5 * max(cos, 0)`` per pair; papers on Stable
Diffusion quantization report the ``100 * cos`` form).

Two ways to name a model (nothing is downloaded):

* ``model="ViT-L-14-quickgelu"`` (an open_clip architecture name) and ``weights=<file>`` (a
  ``.safetensors``/``.bin``/``.pt`` state dict of that architecture);
* ``model="local-dir:/path/folder"``: a folder with ``open_clip_config.json`` (``model_cfg``,
  optional ``preprocess_cfg``) and the weights (``open_clip_model.safetensors`` or
  ``open_clip_pytorch_model.bin``), as on the Hugging Face hub; ``weights`` is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

DEFAULT_CLIP_MODEL = "ViT-L-14-quickgelu"
CLIP_ENV = "SAQ_CLIP_WEIGHTS"
DEFAULT_CLIP_WEIGHTS = Path("checkpoints") / "clip" / "ViT-L-14-openai" / "open_clip_model.safetensors"
CLIP_SOURCE = (
    "https://huggingface.co/timm/vit_large_patch14_clip_224.openai (file open_clip_model.safetensors; "
    "architecture ViT-L-14-quickgelu) or any open_clip checkpoint"
)


@dataclass
class ClipModel:
    """An open_clip model with its evaluation preprocessing and tokenizer."""

    model: nn.Module
    preprocess: Callable[[Any], Tensor]
    tokenizer: Callable[[Sequence[str]], Tensor]
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def resolve_clip(model: str = DEFAULT_CLIP_MODEL, weights: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """``(open_clip model name, weight file)`` from local files (``None``: the folder's own), or a
    ``FileNotFoundError`` naming the path and where to get it."""
    if model.startswith("local-dir:"):
        folder = Path(model.removeprefix("local-dir:")).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise FileNotFoundError(
                f"CLIP folder {folder} lacks open_clip_config.json; get a model folder from {CLIP_SOURCE}"
            )
        if not any(any(folder.glob(p)) for p in ("*.safetensors", "*.bin", "*.pth", "*.pt")):
            raise FileNotFoundError(f"CLIP folder {folder} holds no weight file; get it from {CLIP_SOURCE}")
        return f"local-dir:{folder}", None
    chosen = weights if weights is not None else os.environ.get(CLIP_ENV) or DEFAULT_CLIP_WEIGHTS
    path = Path(os.path.expandvars(str(chosen))).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP weights not found at {path}. Download them once from {CLIP_SOURCE}, then pass "
            f"--clip_weights <file> (or set ${CLIP_ENV}); nothing is downloaded at run time"
        )
    return model, str(path)


def load_clip(
    model: str = DEFAULT_CLIP_MODEL, weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> ClipModel:
    """Build an open_clip model from local files (see the module docstring)."""
    import open_clip

    model, pretrained = resolve_clip(model, weights)
    net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=pretrained, device=device)
    net.eval().requires_grad_(False)
    return ClipModel(net, preprocess, open_clip.get_tokenizer(model), model)


@torch.no_grad()
def clip_scores(clip: ClipModel, images: np.ndarray, prompts: Sequence[str]) -> Tensor:
    """Per-pair ``100 * cos`` for uint8 ``[N, H, W, C]`` images and ``N`` prompts (float64 ``[N]``)."""
    from PIL import Image

    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"CLIP score expects uint8 [N, H, W, C] images, got {images.dtype} {images.shape}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"CLIP score needs one prompt per image: {images.shape[0]} images, {len(prompts)} prompts")
    rgb = images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)
    pixels = torch.stack([clip.preprocess(Image.fromarray(im)) for im in rgb]).to(clip.device)
    tokens = clip.tokenizer(list(prompts)).to(clip.device)
    img = clip.model.encode_image(pixels).double()
    txt = clip.model.encode_text(tokens).double()
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    return (100.0 * (img * txt).sum(-1)).cpu()


def clip_score(clip: ClipModel, image_batches, prompts: Sequence[str]) -> float:
    """CLIP score over batches of uint8 NHWC images and the matching prompts (in order)."""
    scores, i = [], 0
    for batch in image_batches:
        scores.append(clip_scores(clip, batch, prompts[i:i + batch.shape[0]]))
        i += batch.shape[0]
    if i != len(prompts):
        raise ValueError(f"CLIP score needs one prompt per image: {i} images, {len(prompts)} prompts")
    return max(0.0, float(torch.cat(scores).mean()))
