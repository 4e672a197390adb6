"""Differentiable augmentation for GAN training on small data sets (DiffAugment, Zhao et al. 2020).

D sees real and generated images through the same random, differentiable transforms, so it cannot
memorize the few real images it has, while G's gradients flow through the transforms and G
never learns to draw them. Every random draw comes from the ``torch.Generator`` the caller
passes (seeded per epoch and rank in training), so a resumed run draws the same transforms.

    >>> g = torch.Generator().manual_seed(0)
    >>> diff_augment(torch.zeros(4, 1, 32, 32), ("translation", "cutout"), g).shape
    torch.Size([4, 1, 32, 32])
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

POLICIES = ("translation", "cutout")
BACKGROUND = -1.0  # black in [-1, 1]: what a shift reveals


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its side in x and y; the revealed border is black."""
    n, c, h, w = x.shape
    sy, sx = max(int(h * ratio + 0.5), 1), max(int(w * ratio + 0.5), 1)
    dy = torch.randint(0, 2 * sy + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * sx + 1, (n,), generator=gen).to(x.device)
    padded = F.pad(x, (sx, sx, sy, sy), value=BACKGROUND)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None].expand(n, c, h, w + 2 * sx)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, cols)


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Zero (mid-gray) one square of ``ratio`` times the side per image, anywhere, clipped at the edges."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (n,), generator=gen).to(x.device)[:, None, None]
    ox = torch.randint(0, w + (1 - cw % 2), (n,), generator=gen).to(x.device)[:, None, None]
    yy = torch.arange(h, device=x.device)[None, :, None]
    xx = torch.arange(w, device=x.device)[None, None, :]
    inside = ((yy >= oy - ch // 2) & (yy < oy + ch - ch // 2) & (xx >= ox - cw // 2) & (xx < ox + cw - cw // 2))
    return x * (~inside)[:, None].to(x.dtype)


def diff_augment(x: torch.Tensor, policies: Sequence[str], gen: torch.Generator) -> torch.Tensor:
    """``x`` (N, C, H, W) in [-1, 1] through each policy in order (``translation``, ``cutout``)."""
    for p in policies:
        if p == "translation":
            x = translation(x, gen)
        elif p == "cutout":
            x = cutout(x, gen)
        else:
            raise ValueError(f"unknown augmentation {p!r}; known: {', '.join(POLICIES)}")
    return x
