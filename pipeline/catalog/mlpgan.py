"""The seed article's MLP GAN family (``arch: mlp-gan``): the baseline beside which every quality
figure of the pipeline is reported.

Its declaration and configuration (torch-free); :mod:`pipeline.families.mlpgan.family` is
its implementation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.catalog.base import IMAGE_FORMATS, Family, ModelConfig


class MLPGANConfig(ModelConfig):
    """The seed article's GAN, exactly: MLP G 100 → 256 → 512 → 1024 → 784 (ReLU, Tanh) and MLP D
    784 → 1024 → 512 → 256 → 1 (LeakyReLU 0.2, Sigmoid), BCE loss, at 28 × 28 grey."""

    arch: Literal["mlp-gan"] = Field(..., description="`mlp-gan`: the seed article's fully connected GAN, the baseline "
                                                      "every quality figure stands beside.")
    image_size: Literal[28] = Field(28, description="Output side in pixels (the article's 784 = 28 × 28 outputs).")
    channels: Literal[1] = Field(1, description="Grayscale.")
    z_dim: int = Field(100, ge=1, le=4096, description="Latent vector size (the article's 100).")


def check_job(job) -> None:
    if job.generate is not None and job.generate.prompts is not None:
        raise ValueError("generate.prompts: the mlp-gan architecture is unconditional; prompts need a conditional "
                         "model (use generate.seeds)")


FAMILY = Family(
    arch="mlp-gan", config=MLPGANConfig, implementation_path="pipeline.families.mlpgan.family:MLPGAN",
    summary="the seed article's MLP GAN (100-256-512-1024-784), unconditional, 28 x 28",
    formats=IMAGE_FORMATS, gate_keys=("max_fld", "max_fld_ratio", "min_score", "max_memorization"),
    generate_options=("provenance",),
    check_job=check_job)
