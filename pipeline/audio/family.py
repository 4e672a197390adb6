"""What every audio family shares: :class:`AudioFamily`, the audio modality's hooks on top of the image
families' (an audio family's network is an image generator over log-mel pictures).

* Data: ``train.data.source: audio`` (:mod:`pipeline.audio.data`): clips as their log-mel pictures,
  through the image families' data checks and training loop.
* Generation: :class:`~pipeline.audio.sampler.AudioSampler`, one WAV per item and the Parquet
  ``audio`` column.
* Evaluation: the image evaluation on log-mel pictures (a LeNet-style domain classifier trained on
  the reference split of the real clips' spectrograms; FLD beside the real-vs-real floor, classifier
  score, precision/recall, memorization, prompt accuracy on held-out phrasings, the gate), with the
  generated samples taken *as published*: G's picture → Griffin-Lim → 16-bit PCM → its log-mel
  picture again (:func:`published_pictures`).
* Report: an ``<audio>`` player and a spectrogram thumbnail per gallery card.
"""

from __future__ import annotations

import base64
import io
import wave
from typing import Any

import numpy as np

from pipeline.audio.data import audio_dataset
from pipeline.audio.sampler import ENCODER, AudioSampler, pictures_to_pcm
from pipeline.audio.wav import chunks
from pipeline.errors import PipelineError
from pipeline.image.family import ImageFamily
from pipeline.report.assets import Asset, parquet_assets, parquet_parts
from pipeline.report.html import esc, provenance_rows, src
from pipeline.storage import Store

PROVENANCE_KEYS = ["item_id", "seed", "label", "prompt", "wav_sha256", "model_sha256", "job", "created_at",
                   "sampling_rate", "duration", "DigitalSourceType"]


def published_pictures(images: np.ndarray, config: Any) -> np.ndarray:
    """G's uint8 log-mel pictures → the log-mel pictures of the WAV files they become (as the sampler writes)."""
    from pipeline.audio.data import pictures
    from pipeline.audio.spectrum import from_pcm16

    out = []
    for lo in range(0, len(images), 256):
        pcm = pictures_to_pcm(images[lo:lo + 256], int(getattr(config, "griffin_lim_iters", 32)))
        out.append(pictures(list(from_pcm16(pcm).numpy())))
    return np.concatenate(out) if out else images


def wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    """A PCM-16 mono WAV's samples and rate (Python's wave module)."""
    with wave.open(io.BytesIO(data)) as w:
        return np.frombuffer(w.readframes(w.getnframes()), "<i2"), w.getframerate()


def spectrogram_png(data: bytes) -> bytes:
    """A WAV's log-mel picture as a PNG, low bands at the bottom (the card's thumbnail)."""
    from pipeline.audio.data import pictures
    from pipeline.audio.spectrum import CLIP, from_pcm16
    from pipeline.image.png import encode_png

    pcm, _ = wav_samples(data)
    clip = np.zeros(CLIP, np.float32)
    clip[: min(CLIP, len(pcm))] = from_pcm16(pcm[:CLIP]).numpy()
    return encode_png(np.ascontiguousarray(pictures([clip])[0, 0, ::-1]), {})


class AudioFamily(ImageFamily):
    """The audio modality's hooks; a family adds ``build``, ``loop``, ``parts``, ``export``, ``describe``."""

    published = staticmethod(published_pictures)
    reader = staticmethod(audio_dataset)

    def check_generate(self, job: Any, config: Any, model_uri: str) -> None:
        super().check_generate(job, config, model_uri)
        prov = job.generate.provenance
        if prov is not None and prov.watermark is not None:
            raise PipelineError("generate.provenance.watermark: the watermark is for images; remove it for audio")

    def sampler(self, package: Any, cfg: Any) -> AudioSampler:
        return AudioSampler(package, cfg)

    def manifest_encoder(self, config: Any) -> dict:
        return dict(ENCODER)

    def read_assets(self, store: Store, manifest: dict, limit: int) -> list[Asset]:
        parts = parquet_parts(store)
        if parts:
            return parquet_assets(store, parts, limit, file_column="audio", ext="wav")
        wavs = sorted((f for f in store.list("images") if f.endswith(".wav")), key=lambda f: f.rsplit("/", 1)[-1])
        out = []
        for rel in wavs[:limit]:
            data = store.read(rel)
            info = {k[5:]: v.decode("utf-8", "replace") for k, v in chunks(data).items() if k.startswith("INFO/")}
            pcm, rate = wav_samples(data)
            meta = {"item_id": info.get("INAM", rel.rsplit("/", 1)[-1][:-4]), "prompt": info.get("ISBJ"),
                    "sampling_rate": rate, "duration": len(pcm) / rate, "DigitalSourceType": info.get("IKEY", "")}
            out.append(Asset(meta["item_id"], data, {k: v for k, v in meta.items() if v is not None}, "wav"))
        return out

    def card(self, asset: Asset, file_rel: str | None) -> str:
        thumb = base64.b64encode(spectrogram_png(asset.data)).decode() if asset.data else ""
        return (f"<div class='card'><img class='px' src='data:image/png;base64,{thumb}' alt='log-mel spectrogram of "
                f"{esc(asset.item_id)}' width='128' height='128'><audio controls preload='none' style='width:100%' "
                f"src='{src(file_rel or '')}'></audio><table>{provenance_rows(asset.meta, PROVENANCE_KEYS)}</table>"
                "</div>")
