"""The real images a model is judged against, and their seeded held-out/reference split.

The model's training data (``evaluate.data``, else ``train.data``, else what the package's
``model.json`` names) at the model's size and channels, as uint8 arrays. Without a test split, a
seeded permutation holds out N = ``evaluate.samples`` images for the real-vs-real floor and the
rest is the reference set (:func:`split_real`). With one (``evaluate.heldout``), the whole training
data is the reference set and the floor's N are drawn, seeded, from the test split
(:func:`split_test`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
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
    classes: list[str] = field(default_factory=list)  # class names by label id, when the source names them

    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return bool(self.count) and bool((self.labels >= 0).all())


@dataclass
class Split:
    """The real data's roles: N held-out images for the floor, the reference set, what G trained on."""

    heldout: np.ndarray  # indices into RealData: the floor's N real images
    reference: np.ndarray  # the extractor trains on these; every metric compares against them
    train: np.ndarray  # the images G trained on, which memorization compares against
    test: np.ndarray | None = None  # a test split given apart (evaluate.heldout): all its indices; else None
    test_source: str = ""  # its source, for messages
    test_fingerprint: str = ""

    @property
    def n(self) -> int:
        return len(self.heldout)

    @property
    def tested(self) -> bool:
        """The floor comes from a test split given apart (``evaluate.heldout``)."""
        return self.test is not None


def real_data(data: DataSpec, model: ModelSpec, storage: StorageSpec | None = None,
              address: str | None = None, reader: Reader | None = None, section: str = "train.data") -> RealData:
    """The real images at the model's size and channels (digits without Ray; folders and Parquet via Ray Data;
    ``reader``: a modality's own source, see :func:`pipeline.image.data.load_data`). ``section``: the spec
    section ``data`` came from, which a source's one-line error names (the sources say ``train.data``)."""
    if data.source == "digits" and reader is None:
        images, labels = digits_arrays(model.image_size, model.channels, data.limit)
        source = "digits"
    else:
        ensure_ray(address, dashboard=False)
        try:
            loaded = load_data(data, model, storage, reader)
        except PipelineError as exc:
            if section == "train.data":
                raise
            raise PipelineError(str(exc).replace("train.data.", f"{section}.")) from None
        x, y = read_all(loaded)
        images, labels, source = x.numpy(), y.numpy(), data.uri or data.source
    h = hashlib.sha256(f"{source}:{model.image_size}:{model.channels}:{images.shape}\n".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    classes = [] if data.source == "digits" and reader is None else list(loaded.classes)
    return RealData(images=np.ascontiguousarray(images), labels=np.asarray(labels, np.int64), source=source,
                    fingerprint=h.hexdigest(), classes=classes)


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
    return Split(heldout=np.sort(perm[:n]), reference=np.sort(perm[n:]), train=np.arange(real.count))


def split_test(train: RealData, test: RealData, n: int, seed: int) -> tuple[RealData, Split]:
    """A training and a test split (``evaluate.heldout``) as one :class:`RealData`, training images first:
    the reference set is all of the training data (G saw all of it), and the floor's ``n`` images are drawn
    (seeded) from the test data, all of them when ``n`` is its count."""
    if n > test.count:
        raise PipelineError(f"evaluate.samples: N={n:,} needs {n:,} held-out real images, but evaluate.heldout "
                            f"({test.source}) has {test.count:,}; use evaluate.samples <= {test.count:,}")
    if train.images.shape[1:] != test.images.shape[1:]:  # both are read at the model's size: cannot happen
        raise PipelineError(f"evaluate.heldout: {test.source} images are {test.images.shape[1:]}, the training "
                            f"data's {train.images.shape[1:]}")
    if train.labelled != test.labelled:
        which, other = (test, train) if train.labelled else (train, test)
        raise PipelineError(f"evaluate.heldout: {which.source} has no labels but {other.source} has; the training "
                            "and test splits must both be labelled or both not")
    h = hashlib.sha256(f"train:{train.fingerprint}\ntest:{test.fingerprint}\n".encode())
    both = RealData(images=np.concatenate([train.images, test.images]),
                    labels=np.concatenate([train.labels, test.labels]), source=train.source,
                    fingerprint=h.hexdigest(), classes=train.classes or test.classes)
    pick = np.random.default_rng(seed).permutation(test.count)[:n]
    return both, Split(heldout=train.count + np.sort(pick), reference=np.arange(train.count),
                       train=np.arange(train.count), test=train.count + np.arange(test.count),
                       test_source=test.source, test_fingerprint=test.fingerprint)


def train_images(real: RealData, split: Split) -> np.ndarray:
    """The images G trained on (a view when they are the first ones, as both splits make them)."""
    t = split.train
    if len(t) and t[0] == 0 and t[-1] == len(t) - 1:
        return real.images[:len(t)]
    return real.images[t]


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, S, S) → float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)
