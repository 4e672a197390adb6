"""The audio families' generation sampler: items → WAV bytes with provenance plus their Parquet row.

An audio family's exported network is an image generator over log-mel pictures
(:mod:`pipeline.image.sampler`): the latents, conditions and prompts of a micro-batch are the image
sampler's, and so is the rounding of G's output to uint8. Each picture then goes through the fixed
inverse (:func:`pipeline.audio.spectrum.to_wave`) to 16-bit PCM, and into a WAV with its provenance:
the RIFF ``LIST/INFO`` chunk and the XMP packet in ``_PMX`` (:mod:`pipeline.audio.wav`), then, when
``generate.provenance.c2pa`` asks, a C2PA manifest in a ``C2PA`` chunk, signed as the PNGs are
(:mod:`pipeline.provenance.c2pa`). The row's ``audio`` column is the Hugging Face ``datasets`` Audio
layout, ``{bytes, path}``.

The actor runs with one torch thread and fixed micro-batches, so a WAV's bytes depend only on (spec,
model package, item).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from pipeline.audio.spectrum import CLIP, RATE, to_pcm16, to_wave
from pipeline.audio.wav import SCHEMA, encode_wav, info_fields
from pipeline.image.sampler import ImageSampler
from pipeline.provenance.c2pa import manifest_for
from pipeline.provenance.xmp import XmpFields, xmp_packet
from pipeline.storage import sha256

ENCODER = {"wav": "aigc-wav/1 (PCM 16-bit mono, LIST/INFO, XMP in _PMX, C2PA chunk when signed)",
           "parquet_schema": SCHEMA.to_string()}


def pictures_to_pcm(images: np.ndarray, iters: int) -> np.ndarray:
    """uint8 log-mel pictures (N, 1, 64, 64) → int16 samples (N, CLIP) through the fixed inverse."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
        return to_pcm16(to_wave(x, iters))


class AudioSampler(ImageSampler):
    """One micro-batch of items → [(``{"wav": bytes}``, Parquet row)] for a log-mel generator."""

    schema = SCHEMA
    ext, column = "wav", "audio"

    def __init__(self, package: Any, cfg: Any):
        super().__init__(package, cfg)  # the signer; ``canonical`` strips a .wav when signatures vary
        self.iters = int(getattr(self.model, "griffin_lim_iters", 32))

    def wav(self, it: Any, pcm: np.ndarray, res: dict | None) -> bytes:
        cfg, prov = self.cfg, self.prov
        prompt = it.prompt if prov.include_prompt else None
        created = self.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        xmp = None
        if prov.xmp:
            extra = {"condition": json.dumps(res, sort_keys=True)} if res is not None else {}
            xmp = xmp_packet(XmpFields(job=cfg.job, item_id=it.item_id, seed=it.seed, model_sha256=cfg.model_sha256,
                                       system=self.system, system_version=self.system_version, created=created,
                                       prompt=prompt, label=it.label, extra=extra, medium="audio clip"))
        info = info_fields(job=cfg.job, item_id=it.item_id, seed=it.seed, model_sha256=cfg.model_sha256,
                           created=created[:10], prompt=prompt)
        wav = encode_wav(pcm, RATE, info, xmp)
        if self.signer is not None:
            wav = self.signer.sign(wav, manifest_for(job=cfg.job, date=cfg.date, item_id=it.item_id, seed=it.seed,
                                                     model_sha256=cfg.model_sha256, system=self.system, ext=self.ext))
        return wav

    def __call__(self, chunk: list[Any], path_of: Callable[[str, str], str]) -> list[tuple[dict, dict]]:
        cfg = self.cfg
        imgs, resolved = self.pixels(chunk)  # uint8 NHWC
        pcm = pictures_to_pcm(imgs.transpose(0, 3, 1, 2), self.iters)
        out = []
        for it, samples, res in zip(chunk, pcm, resolved):
            wav = self.wav(it, samples, res)
            row = {"item_id": it.item_id, "seed": it.seed, "prompt": it.prompt, "label": it.label,
                   "resolved_label": res["label"] if res else None, "resolved_p": res["p"] if res else None,
                   "text_encoder": res["encoder"] if res else None,
                   "audio": {"bytes": wav, "path": path_of(it.item_id, "wav")}, "wav_sha256": sha256(wav),
                   "sampling_rate": RATE, "duration": CLIP / RATE, "model_sha256": cfg.model_sha256, "job": cfg.job,
                   "created_at": self.created_at}
            out.append(({"wav": wav}, row))
        return out
