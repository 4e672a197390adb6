"""The seed article's MLP GAN family's implementation: its networks, loop and export; data, sampler,
evaluation and report are the image modality's (:class:`~pipeline.image.family.ImageFamily`)."""

from __future__ import annotations

from typing import Any

from pipeline.families.dcgan.family import describe_gan, gan_curves
from pipeline.families.mlpgan import loop as mlp_loop
from pipeline.families.mlpgan.model import Generator
from pipeline.image.family import ImageFamily
from pipeline.train.checkpoint import load_part


class MLPGAN(ImageFamily):
    parts = mlp_loop.PARTS
    loop = staticmethod(mlp_loop.loop)

    def build(self, config: Any) -> Generator:
        return Generator(config)

    def export(self, job: Any, ck: Any, data: Any) -> tuple[Any, Any, dict]:
        G = Generator(job.train.model)
        load_part(ck, "G", G)
        return G, job.train.model, {}

    def describe(self, history: list[dict], data: dict) -> str:
        return describe_gan(history, data)

    def curves(self, history: list[dict]) -> dict[str, tuple[str, dict[str, list[float]]]]:
        return gan_curves(history)
