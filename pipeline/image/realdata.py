"""The real images a model is judged against, and their seeded held-out/reference split.

The model's training data (``evaluate.data``, else ``train.data``, else what the package's
``model.json`` names) at the model's size and channels, as uint8 arrays. A seeded permutation
holds out N = ``evaluate.samples`` images for the real-vs-real floor; the rest is the reference set.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.image.data import Reader, digits_arrays
from pipeline.image.trainset import load_data, read_all
from pipeline.runtime import ensure_ray
from pipeline.specs.schema import DataSpec, StorageSpec

ModelSpec = Any  # an image family's configuration: its image_size and channels are read


@dataclass
class RealData:
    """The real images the model is judged against."""

    images: np.ndarray  # uint8 (count, channels, size, size)
    labels: np.ndarray  # int64; -1 where the data has no labels
    source: str  # "digits" or the data URI, for messages
    fingerprint: str  # sha256 of the pixels and labels as used here

    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return bool(self.count) and bool((self.labels >= 0).all())


@dataclass
class Split:
    """A seeded split of the real data: N held-out images for the floor, the rest as reference."""

    heldout: np.ndarray  # indices into RealData
    reference: np.ndarray

    @property
    def n(self) -> int:
        return len(self.heldout)


def real_data(data: DataSpec, model: ModelSpec, storage: StorageSpec | None = None,
              address: str | None = None, reader: Reader | None = None) -> RealData:
    """The real images at the model's size and channels (digits without Ray; folders and Parquet via Ray Data;
    ``reader``: a modality's own source, see :func:`pipeline.image.data.load_data`)."""
    if data.source == "digits" and reader is None:
        images, labels = digits_arrays(model.image_size, model.channels, data.limit)
        source = "digits"
    else:
        ensure_ray(address, dashboard=False)
        loaded = load_data(data, model, storage, reader)
        x, y = read_all(loaded)
        images, labels, source = x.numpy(), y.numpy(), data.uri or data.source
    h = hashlib.sha256(f"{source}:{model.image_size}:{model.channels}:{images.shape}\n".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return RealData(images=np.ascontiguousarray(images), labels=np.asarray(labels, np.int64), source=source,
                    fingerprint=h.hexdigest())


def split_real(real: RealData, n: int, seed: int) -> Split:
    """Hold out ``n`` images (seeded); the rest is the reference set, which must hold at least n/2."""
    need = n + max(n // 2, 2)
    if real.count < need:
        most = max((2 * real.count) // 3, 0)
        raise PipelineError(
            f"evaluate.samples: N={n:,} needs at least {need:,} real images (N held out for the real-vs-real floor "
            f"plus a reference set of at least N/2), but {real.source} has {real.count:,}; "
            f"use evaluate.samples <= {most:,}")
    perm = np.random.default_rng(seed).permutation(real.count)
    return Split(heldout=np.sort(perm[:n]), reference=np.sort(perm[n:]))


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, S, S) → float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
