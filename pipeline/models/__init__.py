"""Model registry: architecture name → (generator builder, discriminator builder)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from pipeline.specs import ModelSpec

from . import dcgan

REGISTRY: dict[str, tuple[Callable[[ModelSpec], nn.Module], Callable[[ModelSpec], nn.Module]]] = {
    "dcgan": (dcgan.Generator, dcgan.Discriminator),
}


def build_generator(cfg: ModelSpec) -> nn.Module:
    return REGISTRY[cfg.arch][0](cfg)


def build_discriminator(cfg: ModelSpec) -> nn.Module:
    return REGISTRY[cfg.arch][1](cfg)
