"""The DCGAN family (``arch: dcgan``, the default): Radford et al. 2015, class- or prompt-conditioned,
with the quality options of ``configs/recipes/gan-quality.yaml`` (upsample G, minibatch-stddev D,
DiffAugment, lazy R1, EMA of G).

Its declaration and configuration (torch-free); :mod:`pipeline.families.dcgan.family` is
its implementation, :mod:`~pipeline.families.dcgan.model` its networks and
:mod:`~pipeline.families.dcgan.loop` its training loop.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.catalog.base import IMAGE_FORMATS, Family, ModelConfig, prompts_need_a_condition
from pipeline.models.text_encoder_config import TextEncoderConfig


class DCGANConfig(ModelConfig):
    """Architecture of the generator (and its discriminator)."""

    arch: Literal["dcgan"] = Field("dcgan", description="Architecture name in the model registry.")
    image_size: Literal[28, 32, 64] = Field(32, description="Output side in pixels.")
    channels: Literal[1, 3, 4] = Field(1, description="1 = grayscale, 3 = RGB, 4 = RGBA (the data's alpha kept,"
                                                      " straight).")
    z_dim: int = Field(64, ge=1, le=4096, description="Latent vector size.")
    g_width: int = Field(64, ge=4, le=1024, description="Generator base feature width.")
    d_width: int = Field(64, ge=4, le=1024, description="Discriminator base feature width.")
    conditional: bool = Field(False, description="Class-conditioned G and D (label embedding / projection).")
    num_classes: int = Field(10, ge=2, le=100_000, description="Number of classes when conditional.")
    g_upsample: Literal["transposed", "nearest", "bilinear"] = Field("transposed", description="How G doubles its "
                                                                                               "feature maps: "
                                                                                               "`transposed` (DCGAN's "
                                                                                               "stride-2 transposed "
                                                                                               "conv) or a "
                                                                                               "`nearest`/`bilinear` "
                                                                                               "upsample followed by a "
                                                                                               "3x3 conv (no "
                                                                                               "checkerboard "
                                                                                               "artifacts).")
    d_minibatch_std: bool = Field(False, description="D appends the batch's feature standard deviation (ProGAN's "
                                                     "minibatch-stddev) before its output, so a batch of look-alikes "
                                                     "is easy to tell from real variety.")
    text_encoder: TextEncoderConfig | None = Field(None, description="Condition G on prompt text instead of a label "
                                                                     "embedding (needs conditional: true).")

    @model_validator(mode="after")
    def _text_needs_classes(self) -> DCGANConfig:
        if self.text_encoder is not None and not self.conditional:
            raise ValueError("text_encoder needs conditional: true (captions are made from class labels)")
        if self.text_encoder is not None and self.text_encoder.classes is not None \
                and len(self.text_encoder.classes) != self.num_classes:
            raise ValueError(f"text_encoder.classes has {len(self.text_encoder.classes)} names for num_classes "
                             f"{self.num_classes}")
        return self


def caption_classes(model: DCGANConfig, data_classes: list[str]) -> list[str]:
    """Class names captions are made from: the spec's, else the data's, else the label ids."""
    te = model.text_encoder
    if te is not None and te.classes:
        return list(te.classes)
    names = list(data_classes)[: model.num_classes]
    return names + [str(i) for i in range(len(names), model.num_classes)]


def with_classes(model: DCGANConfig, data_classes: list[str]) -> DCGANConfig:
    """``model`` with its text encoder's class names filled in (what a package records)."""
    if model.text_encoder is None or model.text_encoder.classes:
        return model
    te = model.text_encoder.model_copy(update={"classes": caption_classes(model, data_classes)})
    return model.model_copy(update={"text_encoder": te})


IMAGE_GATE = ("max_fld", "max_fld_ratio", "min_score", "max_memorization", "min_prompt_accuracy")



FAMILY = Family(
    arch="dcgan", config=DCGANConfig, implementation_path="pipeline.families.dcgan.family:DCGAN",
    summary="DCGAN: convolutional G and projection D, conditioned on a class or a prompt",
    formats=IMAGE_FORMATS, gate_keys=IMAGE_GATE, train_options=("ema", "augment", "r1"),
    generate_options=("provenance",), check_job=prompts_need_a_condition)
