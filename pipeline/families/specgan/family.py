"""The SpecGAN family's implementation: the DCGAN's networks, loop, checkpoint parts and export over log-mel
pictures; data, sampler, evaluation and report cards are the audio modality's
(:class:`~pipeline.audio.family.AudioFamily`).

The DCGAN loop reads its caption templates from the configuration's ``phrasing`` ("speech" here:
"say seven"), so the same loop, DDP wrapping, checkpoints and exact resume train it.
"""

from __future__ import annotations

from typing import Any

from pipeline.audio.family import AudioFamily
from pipeline.families.dcgan.family import DCGAN


class SpecGAN(AudioFamily, DCGAN):
    """The DCGAN (networks, loop, checkpoint parts, export, curves) with the audio modality's hooks, which
    come first: data, sampler, evaluation's ``published``, report cards."""

    def export(self, job: Any, ck: Any, data: Any) -> tuple[Any, Any, dict]:
        net, config, extra = super().export(job, ck, data)
        t = job.train
        return net, config, {**extra, "audio": {"sample_rate": t.model.sample_rate,
                                                "inverse": f"griffin-lim/{t.model.griffin_lim_iters}"}}

    def describe(self, history: list[dict], data: dict) -> str:
        last = history[-1] if history else {}
        if "loss_G" not in last:
            return f"{len(history)} epochs"
        return (f"{len(history)} epochs, {data.get('count', 0):,} clips, loss_D {last['loss_D']:.3f}, "
                f"loss_G {last['loss_G']:.3f}")
