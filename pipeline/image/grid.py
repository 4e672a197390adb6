"""Sample grids: a batch of images in [-1, 1] as one PNG (training's per-epoch grids, evaluation's closest pairs)."""

from __future__ import annotations

import io

import torch

from pipeline.image.data import to_uint8

GRID = 8  # the sample grid is GRID x GRID images


def grid_png(images: torch.Tensor, nrow: int = GRID, pad: int = 2) -> bytes:
    """(N, C, S, S) floats in [-1, 1] → one PNG grid (C = 1 grey, 3 RGB, 4 RGBA with transparent padding)."""
    from PIL import Image

    x = to_uint8(images.cpu())
    n, c, s, _ = x.shape
    rows = -(-n // nrow)
    canvas = torch.zeros(c, rows * (s + pad) + pad, nrow * (s + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[:, pad + r * (s + pad): pad + r * (s + pad) + s, pad + col * (s + pad): pad + col * (s + pad) + s] = x[i]
    arr = canvas[0].numpy() if c == 1 else canvas.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, mode={1: "L", 3: "RGB", 4: "RGBA"}[c]).save(buf, format="PNG")
    return buf.getvalue()
