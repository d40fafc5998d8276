"""PNG grids of samples."""

from __future__ import annotations

import os

import numpy as np
import torch


def _as_uint8_nhwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(images, torch.Tensor) and images.is_floating_point():  # [N, C, H, W] in [-1, 1]
        x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 1).cpu().numpy()
    x = np.asarray(images.cpu() if isinstance(images, torch.Tensor) else images)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"save_grid takes float [N, C, H, W] in [-1, 1] or uint8 [N, H, W, C], got {x.dtype} {x.shape}")
    return x


def save_grid(
    images: torch.Tensor | np.ndarray, path: str | os.PathLike, nrow: int = 10, scale: int | None = None
) -> None:
    """A PNG grid (``nrow`` images per row, full rows only) of float ``[N, C, H, W]`` images in
    ``[-1, 1]`` or uint8 ``[N, H, W, C]``; C in {1, 3}. ``scale``: nearest-neighbour upscaling
    (default 4 for images up to 32 pixels, else 1)."""
    from PIL import Image

    x = _as_uint8_nhwc(images)
    nrow = max(1, min(nrow, x.shape[0]))
    n = (x.shape[0] // nrow) * nrow
    h, w, c = x.shape[1:]
    if c not in (1, 3):
        raise ValueError(f"save_grid: images need 1 or 3 channels, got {c}")
    grid = x[:n].reshape(-1, nrow, h, w, c).transpose(0, 2, 1, 3, 4).reshape(-1, nrow * w, c)
    scale = scale if scale is not None else (4 if max(h, w) <= 32 else 1)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
