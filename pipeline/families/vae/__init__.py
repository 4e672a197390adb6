"""The VAE family (``arch: vae``): a conditional convolutional VAE, the seed article's second
generative family, trained on the same image data as the GANs and judged by the same metrics, plus
its held-out ELBO in bits per dimension.

This module is the family's declaration (torch-free); :mod:`pipeline.families.vae.family` is its
implementation.
"""

from __future__ import annotations

from pipeline.families.base import Family
from pipeline.families.vae.config import VAEConfig


def check_job(job) -> None:
    gen, model = job.generate, job.train.model
    if gen is not None and gen.prompts is not None and not model.conditional:
        raise ValueError("generate.prompts: prompts need a conditional model, but train.model.conditional is false")


FAMILY = Family(
    arch="vae", config=VAEConfig, implementation_path="pipeline.families.vae.family:VAE",
    summary="conditional convolutional VAE with a discretized logistic decoder (ELBO in bits/dim)",
    gate_keys=("max_fld", "max_fld_ratio", "min_score", "max_memorization", "max_bits_per_dim"),
    check_job=check_job)
