"""Inception-v3 features for FID / sFID / IS / KID / precision-recall, from a local weight file.

The network is torch-fidelity's ``FeatureExtractorInceptionV3`` (the TensorFlow 2015-12-05 graph
that FID was defined with, converted to PyTorch, with TF1-compatible bilinear resizing to
299x299), loaded from a local file - never downloaded. One forward pass gives

* ``pool``: the 2048-d ``pool_3`` features (FID, KID, precision/recall);
* ``logits``: the 1008 unbiased logits (Inception Score);
* ``spatial``: the first 7 channels of ``mixed_6/conv`` (= ``Mixed_6d.branch1x1``, 17x17),
  flattened to 2023 values, as ADM's evaluator does for sFID.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor, nn

INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILENAME}"
INCEPTION_ENV = "SAQ_INCEPTION_WEIGHTS"
DEFAULT_INCEPTION_PATH = Path("checkpoints") / "inception" / INCEPTION_FILENAME
SPATIAL_CHANNELS = 7


def resolve_inception_path(path: str | os.PathLike | None) -> Path:
    """``path``, else ``$SAQ_INCEPTION_WEIGHTS``, else ``checkpoints/inception/<file>``; must exist."""
    chosen = path if path is not None else os.environ.get(INCEPTION_ENV) or DEFAULT_INCEPTION_PATH
    resolved = Path(os.path.expandvars(str(chosen))).expanduser()
    if not resolved.is_file():
        how = "given" if path is not None else (f"from ${INCEPTION_ENV}" if os.environ.get(INCEPTION_ENV) else "default")
        raise FileNotFoundError(
            f"Inception weights not found at {resolved} ({how} path). Download torch-fidelity's "
            f"converted FID Inception once: `mkdir -p {resolved.parent} && wget -O {resolved} {INCEPTION_URL}`, "
            f"then pass --inception_weights {resolved} (or set ${INCEPTION_ENV}). Nothing is downloaded at run time."
        )
    return resolved


class InceptionFeatures(NamedTuple):
    pool: Tensor  # [N, 2048]
    logits: Tensor  # [N, 1008]
    spatial: Tensor  # [N, 2023]


class InceptionExtractor(nn.Module):
    """torch-fidelity's Inception-v3 with the three feature sets above (frozen, eval mode)."""

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = resolve_inception_path(weights_path)
        _check_state_dict(path)
        self.weights_path = path
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
        )
        self._spatial: list[Tensor] = []
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module: nn.Module, args: tuple, output: Tensor) -> None:
        self._spatial.append(output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1).float())

    @torch.no_grad()
    def forward(self, images: Tensor) -> InceptionFeatures:
        """``images``: uint8 ``[N, C, H, W]``, C in {1, 3} (grey is repeated to RGB), any size."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"Inception expects uint8 [N, 1|3, H, W], got {images.dtype} {tuple(images.shape)}")
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        self._spatial.clear()
        pool, logits = self.net(images.contiguous())
        spatial = self._spatial.pop()
        return InceptionFeatures(pool.float(), logits.float(), spatial)


def _check_state_dict(path: Path) -> None:
    """Load with ``weights_only=True`` first (torch-fidelity itself unpickles freely), so a file
    that is not a plain state dict fails here with its name instead of executing code."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a plain PyTorch state dict of the FID Inception network ({err})") from err
    if not isinstance(state, dict) or "Mixed_6d.branch1x1.conv.weight" not in state or "fc.weight" not in state:
        raise ValueError(
            f"{path} is not torch-fidelity's FID Inception state dict ({INCEPTION_FILENAME} from {INCEPTION_URL})"
        )
