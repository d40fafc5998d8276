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


def labelled_grid(
    images: torch.Tensor | np.ndarray, nrow: int = 10, scale: int | None = None, gap: int = 2,
    row_labels: list[str] | None = None, col_labels: list[str] | None = None, title: str | None = None,
) -> np.ndarray:
    """An RGB uint8 ``[H, W, 3]`` grid a person can read: ``nrow`` images per row (full rows only),
    ``gap`` white pixels between cells, an optional label left of every row, above every column and
    a title line. Images: float ``[N, C, H, W]`` in ``[-1, 1]`` or uint8 ``[N, H, W, C]``, C in {1, 3};
    ``scale``: nearest-neighbour upscaling (default 4 for images up to 32 pixels, else 1)."""
    from PIL import Image, ImageDraw

    from .plots import readable_font

    x = _as_uint8_nhwc(images)
    nrow = max(1, min(nrow, x.shape[0]))
    n = (x.shape[0] // nrow) * nrow
    h, w, c = x.shape[1:]
    if c not in (1, 3):
        raise ValueError(f"save_grid: images need 1 or 3 channels, got {c}")
    scale = scale if scale is not None else (4 if max(h, w) <= 32 else 1)
    rows = n // nrow
    font = readable_font()
    line = 12  # the default bitmap font's line height
    left = (max((len(t) for t in row_labels), default=0) * 6 + 6) if row_labels else 0
    top = (line if title else 0) + (line if col_labels else 0)
    ch, cw = h * scale, w * scale
    width = left + nrow * cw + (nrow - 1) * gap
    height = top + rows * ch + (rows - 1) * gap
    canvas = Image.new("RGB", (max(width, len(title or "") * 6 + 4), height), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, k = divmod(i, nrow)
        cell = Image.fromarray(x[i][..., 0] if c == 1 else x[i]).convert("RGB")
        canvas.paste(cell.resize((cw, ch), Image.NEAREST), (left + k * (cw + gap), top + r * (ch + gap)))
    if title:
        draw.text((2, 0), title, fill="black", font=font)
    for k, text in enumerate((col_labels or [])[:nrow]):
        draw.text((left + k * (cw + gap) + 1, top - line), str(text), fill="black", font=font)
    for r, text in enumerate((row_labels or [])[:rows]):
        draw.text((2, top + r * (ch + gap) + max(0, (ch - line) // 2)), str(text), fill="black", font=font)
    return np.asarray(canvas)


def save_grid(
    images: torch.Tensor | np.ndarray, path: str | os.PathLike, nrow: int = 10, scale: int | None = None,
    gap: int = 2, row_labels: list[str] | None = None, col_labels: list[str] | None = None,
    title: str | None = None,
) -> None:
    """Write :func:`labelled_grid` as a PNG."""
    from PIL import Image

    Image.fromarray(labelled_grid(images, nrow, scale, gap, row_labels, col_labels, title)).save(path)
