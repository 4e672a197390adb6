"""The seed article's MLP GAN family (``arch: mlp-gan``): the baseline beside which every quality
figure of the pipeline is reported.

This module is the family's declaration (torch-free); :mod:`pipeline.families.mlpgan.family` is
its implementation.
"""

from __future__ import annotations

from pipeline.families.base import Family
from pipeline.families.mlpgan.config import MLPGANConfig


def check_job(job) -> None:
    if job.generate is not None and job.generate.prompts is not None:
        raise ValueError("generate.prompts: the mlp-gan architecture is unconditional; prompts need a conditional "
                         "model (use generate.seeds)")


FAMILY = Family(
    arch="mlp-gan", config=MLPGANConfig, implementation_path="pipeline.families.mlpgan.family:MLPGAN",
    summary="the seed article's MLP GAN (100-256-512-1024-784), unconditional, 28 x 28",
    gate_keys=("max_fld", "max_fld_ratio", "min_score", "max_memorization"), check_job=check_job)
