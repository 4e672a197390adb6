"""The DCGAN family's implementation: its network, loop, checkpoint parts and export; data, sampler,
evaluation and report cards are the image modality's (:class:`~pipeline.image.family.ImageFamily`)."""

from __future__ import annotations

from typing import Any

from pipeline.catalog.dcgan import with_classes
from pipeline.families.dcgan import loop as gan_loop
from pipeline.families.dcgan.model import Generator
from pipeline.image.family import ImageFamily


def describe_gan(history: list[dict], data: dict) -> str:
    """A GAN training in one line: epochs, images, the last epoch's losses."""
    last = history[-1] if history else {}
    if "loss_G" not in last:
        return f"{len(history)} epochs"
    return (f"{len(history)} epochs, {data.get('count', 0):,} images, loss_D {last['loss_D']:.3f}, "
            f"loss_G {last['loss_G']:.3f}")


def gan_curves(history: list[dict]) -> dict[str, tuple[str, dict[str, list[float]]]]:
    """The report's curves of a GAN: losses, and D's outputs on real and generated images."""
    def col(key: str) -> list[float]:
        return [float(h[key]) if isinstance(h.get(key), (int, float)) else float("nan") for h in history]

    return {"loss.png": ("Losses per epoch", {"loss_D": col("loss_D"), "loss_G": col("loss_G")}),
            "discriminator.png": ("Discriminator output on real (D(x)) and generated (D(G(z))) images",
                                  {"D(x)": col("D(x)"), "D(G(z))": col("D(G(z))")})}


class DCGAN(ImageFamily):
    parts = gan_loop.PARTS
    loop = staticmethod(gan_loop.loop)

    def build(self, config: Any) -> Generator:
        return Generator(config)

    def export(self, job: Any, ck: Any, data: Any) -> tuple[Any, Any, dict]:
        # the generator of the last checkpoint (its moving average, with train.ema); a text generator's
        # package names its classes, so a bare label captions the same way everywhere
        t = job.train
        return gan_loop.exported_generator(ck, t), with_classes(t.model, data.classes), {}

    def describe(self, history: list[dict], data: dict) -> str:
        return describe_gan(history, data)

    def curves(self, history: list[dict]) -> dict[str, tuple[str, dict[str, list[float]]]]:
        return gan_curves(history)
