"""Waveform ↔ log-mel spectrogram, with ``torch.stft`` only (no torchaudio): the audio modality's picture.

An audio model of this pipeline works on a 1-second clip's log-mel spectrogram as a one-channel
64x64 image in [-1, 1] (SpecGAN, Donahue et al. 2019, with mel bands): 64 mel bands (0-8 kHz) by
64 frames of a 512-point Hann STFT with hop 256 at 16 kHz. Levels are dB of mel-band power,
clipped to ``[DB_MIN, DB_MAX]`` and mapped linearly; a full-scale sine reads 0 dB.

The way back is fixed and deterministic: mel → linear magnitude by the filterbank's pseudo-inverse
(clamped at zero), then ``GL_ITERS`` iterations of fast Griffin-Lim (Perraudin et al. 2013,
momentum 0.99) from a zero phase, then the inverse STFT. With one torch thread on the same
hardware it gives the same samples every time, so a WAV's bytes depend only on the spectrogram.

    >>> import torch
    >>> x = torch.sin(torch.arange(CLIP) * 2 * torch.pi * 440 / RATE).unsqueeze(0)
    >>> img = to_image(x); tuple(img.shape)
    (1, 1, 64, 64)
    >>> tuple(to_wave(img).shape)
    (1, 16000)
"""

from __future__ import annotations

import functools

import numpy as np
import torch

RATE = 16_000  # samples per second
CLIP = 16_000  # samples per clip (1 s)
N_FFT = 512
HOP = 256
N_MELS = 64
FRAMES = 64
PADDED = HOP * FRAMES  # 16,384: the clip zero-padded so that the centred STFT has FRAMES (+1) frames
DB_MIN, DB_MAX = -95.0, -5.0  # measured on the corpus: 1st percentile -89 dB, peak -8 dB
GL_ITERS = 32
GL_MOMENTUM = 0.99


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10 ** (m / 2595.0) - 1.0)


@functools.lru_cache(maxsize=None)
def mel_filters() -> torch.Tensor:
    """(N_MELS, N_FFT // 2 + 1) triangular filters on the HTK mel scale, 0 Hz to Nyquist, peak 1."""
    bins = np.fft.rfftfreq(N_FFT, 1.0 / RATE)
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(np.array(RATE / 2.0)), N_MELS + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None] - lo) / (mid - lo)
    down = (hi - bins[None]) / (hi - mid)
    return torch.from_numpy(np.clip(np.minimum(up, down), 0.0, None)).float()


@functools.lru_cache(maxsize=None)
def _pinv() -> torch.Tensor:
    return torch.linalg.pinv(mel_filters().double()).float()


def _window() -> torch.Tensor:
    return torch.hann_window(N_FFT, periodic=True)


def _stft(x: torch.Tensor) -> torch.Tensor:
    return torch.stft(x, N_FFT, HOP, window=_window(), center=True, return_complex=True)


def _istft(spec: torch.Tensor) -> torch.Tensor:
    return torch.istft(spec, N_FFT, HOP, window=_window(), center=True, length=PADDED)


def _scale() -> float:
    return float(_window().sum()) / 2  # a full-scale sine's magnitude in its bin: 0 dB


def to_image(wave: torch.Tensor) -> torch.Tensor:
    """(N, CLIP) float waveforms in [-1, 1] → (N, 1, N_MELS, FRAMES) log-mel images in [-1, 1] (low bands first)."""
    x = torch.nn.functional.pad(wave.float(), (0, PADDED - wave.shape[-1]))
    mag = _stft(x).abs()[..., :FRAMES] / _scale()
    power = torch.einsum("mf,nft->nmt", mel_filters(), mag.pow(2))
    db = 10.0 * torch.log10(power.clamp_min(1e-12))
    return ((db.clamp(DB_MIN, DB_MAX) - DB_MIN) / (DB_MAX - DB_MIN) * 2.0 - 1.0).unsqueeze(1)


def to_wave(image: torch.Tensor, iters: int = GL_ITERS) -> torch.Tensor:
    """(N, 1, N_MELS, FRAMES) log-mel images in [-1, 1] → (N, CLIP) waveforms (deterministic Griffin-Lim)."""
    db = (image.float().squeeze(1).clamp(-1, 1) + 1.0) / 2.0 * (DB_MAX - DB_MIN) + DB_MIN
    power = 10.0 ** (db / 10.0)
    mag = torch.einsum("fm,nmt->nft", _pinv(), power).clamp_min(0.0).sqrt() * _scale()
    mag = torch.cat([mag, mag[..., -1:]], dim=-1)  # the centred STFT's last frame, for istft's length
    angles = torch.ones_like(mag, dtype=torch.complex64)
    prev = torch.zeros_like(angles)
    for _ in range(iters):
        rebuilt = _stft(_istft(mag * angles))
        accel = rebuilt - GL_MOMENTUM / (1 + GL_MOMENTUM) * prev
        angles = accel / accel.abs().clamp_min(1e-12)
        prev = rebuilt
    return _istft(mag * angles)[..., :CLIP].clamp(-1.0, 1.0)


def to_pcm16(wave: torch.Tensor) -> np.ndarray:
    """(N, CLIP) float waveforms → int16 samples (what a WAV holds)."""
    return np.clip(np.round(wave.detach().float().numpy() * 32767.0), -32768, 32767).astype(np.int16)


def from_pcm16(pcm: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(pcm, np.float32) / 32768.0)
