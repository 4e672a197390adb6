"""An out-of-tree aigc-pipeline family: its declaration (torch-free) and configuration.

aigc-pipeline finds it through the ``aigc.families`` entry point in ``pyproject.toml``; the
implementation in :mod:`aigc_family_example.family` is imported only when a tiny-gan model is
trained, loaded, sampled, evaluated or reported.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.catalog.base import IMAGE_FORMATS, Family, ModelConfig


class TinyGANConfig(ModelConfig):
    """A tiny MLP GAN at 28 x 28 grey: the smallest family worth registering."""

    arch: Literal["tiny-gan"] = Field(..., description="`tiny-gan`: the example plugin family.")
    image_size: Literal[28] = Field(28, description="Output side in pixels.")
    channels: Literal[1] = Field(1, description="Grayscale.")
    z_dim: int = Field(16, ge=1, le=1024, description="Latent vector size.")
    hidden: int = Field(128, ge=8, le=4096, description="Width of the hidden layer of G and of D.")


FAMILY = Family(arch="tiny-gan", config=TinyGANConfig, implementation_path="aigc_family_example.family:TinyGAN",
                summary="example plugin: a tiny MLP GAN", formats=IMAGE_FORMATS,
                gate_keys=("max_fld", "max_fld_ratio", "max_memorization"),
                generate_options=("provenance",))  # an ImageFamily: it writes what generate.provenance asks
