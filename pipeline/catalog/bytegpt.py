"""The byte-level GPT family (``arch: bytegpt``): a nanoGPT-style language model over bytes that
completes prompts, trained on a text corpus.

Its declaration and configuration (torch-free); :mod:`pipeline.families.bytegpt.family` is
its implementation.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.catalog.base import Family, ModelConfig


class ByteGPTConfig(ModelConfig):
    """A small byte-level GPT (nanoGPT-style causal self-attention) for text completion."""

    arch: Literal["bytegpt"] = Field(..., description="`bytegpt`: vocabulary of the 256 byte values plus an "
                                                      "end-of-text token.")
    n_layer: int = Field(4, ge=1, le=64, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, le=64, description="Attention heads per block (must divide n_embd).")
    n_embd: int = Field(128, ge=8, le=4096, description="Embedding width.")
    block_size: int = Field(128, ge=8, le=4096, description="Context length in bytes (tokens).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in training (sampling never drops).")

    @model_validator(mode="after")
    def _heads(self) -> ByteGPTConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


FAMILY = Family(
    arch="bytegpt", config=ByteGPTConfig, implementation_path="pipeline.families.bytegpt.family:ByteGPT",
    summary="byte-level GPT: completes text prompts",
    data_sources=("text",), formats=("parquet",), seeds=False, gate_keys=("max_perplexity",),
    train_options=("lm",), generate_options=("text",))
