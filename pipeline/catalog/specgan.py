"""The SpecGAN family (``arch: specgan``): spoken audio from a DCGAN on log-mel spectrograms.

SpecGAN is the spectrogram half of Donahue, McAuley and Puckette, "Adversarial Audio Synthesis"
(ICLR 2019), measured there on SC09, the spoken digits: a DCGAN over a clip's spectrogram as an
image, and a fixed inverse (Griffin-Lim) back to a waveform. Here the picture is a 1-second clip's
64-band log-mel spectrogram at 16 kHz, 64x64 (:mod:`pipeline.audio.spectrum`), G and D are the
DCGAN's (class- or prompt-conditioned, the same text encoder: "say seven"), and the inverse is the
filterbank's pseudo-inverse followed by deterministic fast Griffin-Lim. Every WAV is 16-bit PCM.

Its declaration and configuration (torch-free); :mod:`pipeline.families.specgan.family` is its
implementation, on the audio modality's hooks (:mod:`pipeline.audio.family`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from pipeline.catalog.base import Family, prompts_need_a_condition
from pipeline.catalog.dcgan import IMAGE_GATE, DCGANConfig

AUDIO_FORMATS = ("wav", "parquet", "webdataset")


class SpecGANConfig(DCGANConfig):
    """A DCGAN over 64x64 log-mel spectrograms of 1-second, 16 kHz clips (SpecGAN with mel bands)."""

    arch: Literal["specgan"] = Field(..., description="`specgan`: a DCGAN on log-mel spectrograms, inverted to "
                                                      "audio by deterministic Griffin-Lim.")
    image_size: Literal[64] = Field(64, description="Spectrogram side: 64 mel bands by 64 frames (1 s at 16 kHz).")
    channels: Literal[1] = Field(1, description="One channel: the log-mel level.")
    sample_rate: Literal[16000] = Field(16000, description="Samples per second of the generated WAV files.")
    griffin_lim_iters: int = Field(32, ge=1, le=1000, description="Iterations of the fixed Griffin-Lim inverse (fast "
                                                                  "Griffin-Lim, momentum 0.99, zero initial phase).")
    #: caption templates of the text encoder (pipeline.models.text_encoder.PHRASINGS): "say seven"
    phrasing: ClassVar[str] = "speech"


def refuse_watermark(job: Any) -> None:
    """``check_job``: prompts need a conditional model; the watermark is for images (WAVs carry LIST/INFO,
    XMP and, with ``generate.provenance.c2pa``, a C2PA manifest)."""
    prompts_need_a_condition(job)
    prov = job.generate.provenance if job.generate is not None else None
    if prov is not None and prov.watermark is not None:
        raise ValueError("generate.provenance.watermark: the watermark is for images; remove it for audio")


FAMILY = Family(
    arch="specgan", config=SpecGANConfig, implementation_path="pipeline.families.specgan.family:SpecGAN",
    summary="SpecGAN: a DCGAN on log-mel spectrograms of spoken clips, inverted to 16-bit WAV (Griffin-Lim)",
    data_sources=("audio",), formats=AUDIO_FORMATS, gate_keys=IMAGE_GATE, train_options=("ema", "augment", "r1"),
    generate_options=("provenance",), check_job=refuse_watermark)
