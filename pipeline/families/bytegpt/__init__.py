"""The byte-level GPT family (``arch: bytegpt``): a nanoGPT-style language model over bytes that
completes prompts, trained on a text corpus.

This module is the family's declaration (torch-free); :mod:`pipeline.families.bytegpt.family` is
its implementation.
"""

from __future__ import annotations

from pipeline.families.base import Family
from pipeline.families.bytegpt.config import ByteGPTConfig

FAMILY = Family(
    arch="bytegpt", config=ByteGPTConfig, implementation_path="pipeline.families.bytegpt.family:ByteGPT",
    summary="byte-level GPT: completes text prompts",
    data_sources=("text",), formats=("parquet",), seeds=False, gate_keys=("max_perplexity",),
    train_options=("lm",), generate_options=("text",))
