"""Model registry: architecture name → (generator builder, discriminator builder).

A text model (``bytegpt``) has no discriminator; its "generator" is the byte-level GPT.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from pipeline.specs import ModelSpec

from . import dcgan, textgen

REGISTRY: dict[str, tuple[Callable[[ModelSpec], nn.Module], Callable[[ModelSpec], nn.Module]]] = {
    "dcgan": (dcgan.Generator, dcgan.Discriminator),
    "bytegpt": (textgen.ByteGPT, None),
}


def build_generator(cfg: ModelSpec) -> nn.Module:
    return REGISTRY[cfg.arch][0](cfg)


def build_discriminator(cfg: ModelSpec) -> nn.Module:
    builder = REGISTRY[cfg.arch][1]
    if builder is None:
        raise ValueError(f"architecture '{cfg.arch}' has no discriminator")
    return builder(cfg)
