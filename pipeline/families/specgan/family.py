"""The SpecGAN family's implementation: the DCGAN's networks, loop, checkpoint parts and export over log-mel
pictures; data, sampler, evaluation and report cards are the audio modality's
(:class:`~pipeline.audio.family.AudioFamily`).

The DCGAN loop reads its caption templates from the configuration's ``phrasing`` ("speech" here:
"say seven"), so the same loop, DDP wrapping, checkpoints and exact resume train it.
"""

from __future__ import annotations

from typing import Any

from pipeline.audio.family import AudioFamily
from pipeline.catalog.dcgan import with_classes
from pipeline.families.dcgan import loop as gan_loop
from pipeline.families.dcgan.family import gan_curves
from pipeline.families.dcgan.model import Generator


class SpecGAN(AudioFamily):
    parts = gan_loop.PARTS
    loop = staticmethod(gan_loop.loop)

    def build(self, config: Any) -> Generator:
        return Generator(config)

    def export(self, job: Any, ck: Any, data: Any) -> tuple[Any, Any, dict]:
        t = job.train
        return gan_loop.exported_generator(ck, t), with_classes(t.model, data.classes), \
            {"audio": {"sample_rate": t.model.sample_rate, "inverse": f"griffin-lim/{t.model.griffin_lim_iters}"}}

    def describe(self, history: list[dict], data: dict) -> str:
        last = history[-1] if history else {}
        if "loss_G" not in last:
            return f"{len(history)} epochs"
        return (f"{len(history)} epochs, {data.get('count', 0):,} clips, loss_D {last['loss_D']:.3f}, "
                f"loss_G {last['loss_G']:.3f}")

    def curves(self, history: list[dict]) -> dict[str, tuple[str, dict[str, list[float]]]]:
        return gan_curves(history)
