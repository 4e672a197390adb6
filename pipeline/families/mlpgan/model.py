"""The seed article's GAN, exactly: fully connected G and D on flattened 28 × 28 images.

    G: z (100) → 256 → 512 → 1024 → 784, ReLU between, Tanh at the end
    D: 784 → 1024 → 512 → 256 → 1, LeakyReLU(0.2) between, Sigmoid at the end

Trained with binary cross-entropy on D's probabilities and Adam at 2e-4 (:mod:`~pipeline.families.mlpgan.loop`).
Unconditional; PyTorch's default initialisation, as in the article.

    >>> from pipeline.catalog.mlpgan import MLPGANConfig
    >>> Generator(MLPGANConfig(arch="mlp-gan"))(torch.randn(2, 100)).shape
    torch.Size([2, 1, 28, 28])
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.catalog.mlpgan import MLPGANConfig

SIDE = 28


class Generator(nn.Module):
    def __init__(self, cfg: MLPGANConfig):
        super().__init__()
        self.cfg = cfg
        self.net = nn.Sequential(
            nn.Linear(cfg.z_dim, 256), nn.ReLU(),
            nn.Linear(256, 512), nn.ReLU(),
            nn.Linear(512, 1024), nn.ReLU(),
            nn.Linear(1024, SIDE * SIDE), nn.Tanh(),
        )

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, cond: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Images in [-1, 1], (N, 1, 28, 28); ``labels`` and ``cond`` are ignored (an unconditional G)."""
        return self.net(z).view(-1, 1, SIDE, SIDE)


class Discriminator(nn.Module):
    def __init__(self, cfg: MLPGANConfig):
        super().__init__()
        self.cfg = cfg
        self.net = nn.Sequential(
            nn.Linear(SIDE * SIDE, 1024), nn.LeakyReLU(0.2),
            nn.Linear(1024, 512), nn.LeakyReLU(0.2),
            nn.Linear(512, 256), nn.LeakyReLU(0.2),
            nn.Linear(256, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """The probability that each image is real, (N,)."""
        return self.net(x.flatten(1)).squeeze(1)
