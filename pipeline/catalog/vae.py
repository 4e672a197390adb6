"""The VAE family (``arch: vae``): a conditional convolutional VAE, the seed article's second
generative family, trained on the same image data as the GANs and judged by the same metrics, plus
its held-out ELBO in bits per dimension.

Its declaration and configuration (torch-free); :mod:`pipeline.families.vae.family` is its
implementation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.catalog.base import IMAGE_FORMATS, Family, ModelConfig, prompts_need_a_condition


class VAEConfig(ModelConfig):
    """A conditional convolutional VAE (Kingma & Welling 2014; Sohn et al. 2015) with a discretized
    logistic decoder, so its ELBO is a bound on the log-likelihood of the 8-bit pixels (bits per dim)."""

    arch: Literal["vae"] = Field(..., description="`vae`: a conditional convolutional variational autoencoder.")
    image_size: Literal[28, 32, 64] = Field(32, description="Output side in pixels.")
    channels: Literal[1, 3, 4] = Field(1, description="1 = grayscale, 3 = RGB, 4 = RGBA (the data's alpha kept,"
                                                      " straight).")
    z_dim: int = Field(32, ge=1, le=4096, description="Latent vector size.")
    width: int = Field(32, ge=4, le=1024, description="Base feature width of encoder and decoder.")
    conditional: bool = Field(True, description="Encoder and decoder see the class (a label embedding); prompts then "
                                                "need a label.")
    num_classes: int = Field(10, ge=2, le=100_000, description="Number of classes when conditional.")
    beta: float = Field(1.0, gt=0, le=1000, description="Weight of the KL term in the ELBO (β-VAE; 1 is the true "
                                                        "ELBO).")
    kl_warmup_steps: int = Field(1000, ge=0, le=10_000_000, description="Steps over which the KL weight ramps linearly "
                                                                        "from 0 to beta (a function of the global "
                                                                        "step, so resume is exact); 0: no warm-up.")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate of encoder and decoder.")
    heldout: float = Field(0.1, ge=0, lt=1, description="Share of the training data kept out of training (every k-th "
                                                        "example in key order), on which the evaluation measures the "
                                                        "ELBO in bits per dimension; 0: none held out (the ELBO is "
                                                        "then on training images).")



FAMILY = Family(
    arch="vae", config=VAEConfig, implementation_path="pipeline.families.vae.family:VAE",
    summary="conditional convolutional VAE with a discretized logistic decoder (ELBO in bits/dim)",
    formats=IMAGE_FORMATS, gate_keys=("max_fld", "max_fld_ratio", "min_score", "max_memorization", "max_bits_per_dim"),
    generate_options=("provenance",), check_job=prompts_need_a_condition)
