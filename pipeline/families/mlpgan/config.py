"""Configuration of the seed article's MLP GAN (``arch: mlp-gan``), torch-free."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.families.base import ModelConfig


class MLPGANConfig(ModelConfig):
    """The seed article's GAN, exactly: MLP G 100 → 256 → 512 → 1024 → 784 (ReLU, Tanh) and MLP D
    784 → 1024 → 512 → 256 → 1 (LeakyReLU 0.2, Sigmoid), BCE loss, at 28 × 28 grey."""

    arch: Literal["mlp-gan"] = Field(..., description="`mlp-gan`: the seed article's fully connected GAN, the baseline "
                                                      "every quality figure stands beside.")
    image_size: Literal[28] = Field(28, description="Output side in pixels (the article's 784 = 28 × 28 outputs).")
    channels: Literal[1] = Field(1, description="Grayscale.")
    z_dim: int = Field(100, ge=1, le=4096, description="Latent vector size (the article's 100).")
