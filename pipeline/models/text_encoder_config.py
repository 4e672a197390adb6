"""Configuration of the prompt text encoder (:mod:`pipeline.models.text_encoder`), torch-free."""

from __future__ import annotations

from pydantic import Field, model_validator

from pipeline.checks import Strict


class TextEncoderConfig(Strict):
    """Prompt → condition: a hashed word/character n-gram embedding trained jointly with the GAN."""

    buckets: int = Field(32768, ge=16, le=2**22, description="Hash buckets of the n-gram embedding table.")
    dim: int = Field(64, ge=2, le=4096, description="Width of the n-gram embeddings.")
    hidden: int = Field(128, ge=2, le=8192, description="Hidden width of the MLP from the n-gram bag to the condition.")
    min_ngram: int = Field(2, ge=1, le=10, description="Shortest character n-gram (words carry < and > marks).")
    max_ngram: int = Field(5, ge=1, le=10, description="Longest character n-gram.")
    lr: float = Field(2e-3, gt=0, le=1, description="Learning rate (Adam) of the text encoder, which learns from "
                                                    "caption cross-entropy.")
    classes: list[str] | None = Field(None, description="Class names that captions are made from, by label id; "
                                                        "default: the training data's classes (digits: 0-9, folders: "
                                                        "subfolder names).")

    @model_validator(mode="after")
    def _ngrams(self) -> TextEncoderConfig:
        if self.min_ngram > self.max_ngram:
            raise ValueError(f"min_ngram ({self.min_ngram}) is larger than max_ngram ({self.max_ngram})")
        return self
