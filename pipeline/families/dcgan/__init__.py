"""The DCGAN family (``arch: dcgan``, the default): Radford et al. 2015, class- or prompt-conditioned,
with the quality options of ``configs/recipes/gan-quality.yaml`` (upsample G, minibatch-stddev D,
DiffAugment, lazy R1, EMA of G).

This module is the family's declaration (torch-free); :mod:`pipeline.families.dcgan.family` is
its implementation, :mod:`~pipeline.families.dcgan.model` its networks and
:mod:`~pipeline.families.dcgan.loop` its training loop.
"""

from __future__ import annotations

from pipeline.families.base import Family
from pipeline.families.dcgan.config import DCGANConfig

IMAGE_GATE = ("max_fld", "max_fld_ratio", "min_score", "max_memorization", "min_prompt_accuracy")


def check_job(job) -> None:
    gen, model = job.generate, job.train.model
    if gen is not None and gen.prompts is not None and not model.conditional:
        raise ValueError("generate.prompts: prompts need a conditional model, but train.model.conditional is false")


FAMILY = Family(
    arch="dcgan", config=DCGANConfig, implementation_path="pipeline.families.dcgan.family:DCGAN",
    summary="DCGAN: convolutional G and projection D, conditioned on a class or a prompt",
    gate_keys=IMAGE_GATE, train_options=("ema", "augment", "r1"), check_job=check_job)
