"""Line plots as PNG, drawn with PIL (no matplotlib needed): the report's training curves."""

from __future__ import annotations

import io
import math
from typing import Any

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 0.5:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def line_plot(series: dict[str, list[float]], *, title: str, xlabel: str = "epoch", x0: int = 1,
              size: tuple[int, int] = (640, 360)) -> bytes:
    """A PNG line plot of ``series`` (name → values at x = x0, x0+1, ...), with axes, ticks and a legend."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 64, 20, 40, 48
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font, small = _font(15), _font(12)
    values = [v for vals in series.values() for v in vals if v is not None and math.isfinite(v)]
    n = max((len(v) for v in series.values()), default=0)
    d.text((left, 10), title, fill="black", font=font)
    if not values or n == 0:
        d.text((left, h // 2), "no data", fill="gray", font=font)
        return _png(img)
    yt = _nice_ticks(min(values), max(values))
    ylo, yhi = yt[0], yt[-1]
    xlo, xhi = x0, x0 + max(n - 1, 1)

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - xlo) / (xhi - xlo) * (w - left - right),
                h - bottom - (y - ylo) / ((yhi - ylo) or 1) * (h - top - bottom))

    for t in yt:  # horizontal grid and y labels
        _, y = px(xlo, t)
        d.line([(left, y), (w - right, y)], fill=(225, 225, 225))
        label = f"{t:g}"
        d.text((left - 8 - d.textlength(label, font=small), y - 7), label, fill="black", font=small)
    step = max(1, math.ceil(n / 10))
    for i in range(0, n, step):  # x ticks
        x, _ = px(x0 + i, ylo)
        d.line([(x, h - bottom), (x, h - bottom + 4)], fill="black")
        label = str(x0 + i)
        d.text((x - d.textlength(label, font=small) / 2, h - bottom + 6), label, fill="black", font=small)
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    d.text(((w - d.textlength(xlabel, font=small)) / 2, h - 20), xlabel, fill="black", font=small)
    lx = w - right - 10
    for k, (name, vals) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        pts = [px(x0 + i, v) for i, v in enumerate(vals) if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        for x, y in pts:
            d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=color)
        tw = d.textlength(name, font=small)  # legend, top right
        ly = top + 4 + 16 * k
        d.line([(lx - tw - 28, ly + 7), (lx - tw - 8, ly + 7)], fill=color, width=3)
        d.text((lx - tw, ly), name, fill="black", font=small)
    return _png(img)


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
