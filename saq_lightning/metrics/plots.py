"""Line charts as PNG with Pillow only (matplotlib is not a dependency of the package).

Enough for diagnostics: side-by-side panels, linear axes with labelled ticks, solid or dashed
series, a legend per panel.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")


@dataclass
class Series:
    label: str
    y: Sequence[float]
    x: Sequence[float] | None = None  # default 0, 1, 2, ...
    color: str | None = None
    dashed: bool = False


@dataclass
class Panel:
    title: str
    xlabel: str = ""
    ylabel: str = ""
    series: list[Series] = field(default_factory=list)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v != 0 else "0"


def _dashed(draw, pts, fill, width, dash: float = 6.0) -> None:
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        length = math.hypot(x1 - x0, y1 - y0)
        n = max(1, int(length / dash))
        for j in range(0, n, 2):
            a, b = j / n, min(1.0, (j + 1) / n)
            draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                      fill=fill, width=width)


def _draw_panel(draw, font, panel: Panel, box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    px0, py0, px1, py1 = left + 60, top + 28, right - 12, bottom - 44
    draw.text((left + 60, top + 6), panel.title, fill="black", font=font)
    values = [(x, y) for s in panel.series for x, y in zip(s.x if s.x is not None else range(len(s.y)), s.y)
              if math.isfinite(y)]
    if not values:
        draw.text((px0 + 10, (py0 + py1) // 2), "no data", fill="black", font=font)
        return
    xs, ys = [v[0] for v in values], [v[1] for v in values]
    xlo, xhi = min(xs), max(xs)
    ylo, yhi = min(0.0, min(ys)), max(ys)
    if xhi == xlo:
        xhi = xlo + 1
    if yhi == ylo:
        yhi = ylo + 1
    yhi += 0.05 * (yhi - ylo)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return px0 + (x - xlo) / (xhi - xlo) * (px1 - px0), py1 - (y - ylo) / (yhi - ylo) * (py1 - py0)

    draw.rectangle([px0, py0, px1, py1], outline="black")
    for t in _ticks(ylo, yhi):
        _, y = to_px(xlo, t)
        draw.line([(px0 - 4, y), (px0, y)], fill="black")
        draw.line([(px0 + 1, y), (px1 - 1, y)], fill="#e6e6e6")
        draw.text((left + 4, y - 6), _fmt(t), fill="black", font=font)
    for t in _ticks(xlo, xhi, 8):
        x, _ = to_px(t, ylo)
        draw.line([(x, py1), (x, py1 + 4)], fill="black")
        draw.text((x - 6, py1 + 6), _fmt(t), fill="black", font=font)
    draw.text(((px0 + px1) // 2 - 3 * len(panel.xlabel), py1 + 22), panel.xlabel, fill="black", font=font)
    if panel.ylabel:
        draw.text((left + 4, top + 6 + 14), panel.ylabel, fill="#555555", font=font)
    for i, s in enumerate(panel.series):
        color = s.color or PALETTE[i % len(PALETTE)]
        xs_s = s.x if s.x is not None else range(len(s.y))
        pts = [to_px(x, y) for x, y in zip(xs_s, s.y) if math.isfinite(y)]
        if len(pts) > 1:
            (_dashed if s.dashed else lambda d, p, fill, width: d.line(p, fill=fill, width=width))(draw, pts, color, 2)
        for x, y in pts:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        ly = py0 + 6 + 14 * i
        if s.dashed:
            _dashed(draw, [(px0 + 8, ly + 6), (px0 + 30, ly + 6)], color, 2, dash=4)
        else:
            draw.line([(px0 + 8, ly + 6), (px0 + 30, ly + 6)], fill=color, width=2)
        draw.text((px0 + 36, ly), s.label, fill="black", font=font)


def readable_font():
    """Pillow's fixed-width bitmap font (6 px per character, every character a full cell).

    ``ImageFont.load_default()`` is a small proportional FreeType font in which '.' and ' ' are
    about 2 px wide, so that labels read "lastckpt" and "studentorder"."""
    from PIL import ImageFont

    return ImageFont.load_default_imagefont()


def save_line_chart(panels: Sequence[Panel], path: str | os.PathLike, title: str = "",
                    panel_size: tuple[int, int] = (460, 340)) -> None:
    """Panels side by side in one PNG."""
    from PIL import Image, ImageDraw

    w, h = panel_size
    head = 24 if title else 0
    img = Image.new("RGB", (w * len(panels), h + head), "white")
    draw = ImageDraw.Draw(img)
    font = readable_font()
    if title:
        draw.text((10, 6), title, fill="black", font=font)
    for i, panel in enumerate(panels):
        _draw_panel(draw, font, panel, (i * w, head, (i + 1) * w, head + h))
    img.save(path, format="PNG")
