"""The training data of an image family: read once through Ray Data into its data cache, then streamed.

:func:`load_data` turns a :class:`~pipeline.specs.DataSpec` into a :class:`TrainData`: the source read and
decoded by :mod:`pipeline.image.data` (digits, image folders, Parquet, IDX, pixel tables, presets, or a
modality's own reader), written once into a data cache (:mod:`pipeline.image.stream`) keyed by the source,
with a content fingerprint for ``model.json``. Training workers stream the cache
(:meth:`TrainData.stream`); evaluation reads it whole (:func:`read_all`). Try it::

    python -c "from pipeline.runtime import ensure_ray; ensure_ray(); \
from pipeline.image.trainset import load_data; from pipeline.specs import DataSpec, DCGANConfig; \
print(load_data(DataSpec(limit=100), DCGANConfig()).summary())"
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pipeline.catalog.base import IMAGE_SOURCES
from pipeline.checks import uri_scheme
from pipeline.errors import PipelineError, StorageError, last_error_line, user_error_line
from pipeline.image.data import (
    BLOCK_ROWS,
    ModelSpec,
    Reader,
    digits_dataset,
    images_dataset,
    parquet_dataset,
    raw_dataset,
)
from pipeline.image.sources import FASHION_DIR, RAW_SOURCES, mnist5k_path
from pipeline.image.stream import DataCache, Stream, cache_key, open_cache, source_listing, write_cache
from pipeline.specs.schema import DataSpec, StorageSpec
from pipeline.storage import absolute_uri


@dataclass
class TrainData:
    """A decoded, resized training set in its data cache (:mod:`pipeline.image.stream`) and what identifies it."""

    cache: DataCache  # the rows, in source order, as row groups the workers stream
    count: int
    fingerprint: str
    source: str
    uri: str | None
    image_size: int
    channels: int
    labelled: bool
    num_labels: int = 0  # largest label + 1 (0 when unlabelled)
    classes: list[str] = field(default_factory=list)  # class names by label id, when known
    storage: Any = None  # the StorageSpec the cache is read with
    window: int = 16384  # train.data.shuffle_window
    built_s: float | None = None  # seconds this call spent decoding into the cache; None: an existing one was read

    def stream(self, skip_every: int | None = None) -> Stream:
        """The rows as a worker streams them (``skip_every``: every k-th row in source order left out)."""
        return Stream(self.cache, self.storage, self.window, skip_every)

    def summary(self) -> dict:
        """What model.json records about the data."""
        return {"source": self.source, "uri": absolute_uri(self.uri) if self.uri else None, "count": self.count,
                "unit": "images", "fingerprint": self.fingerprint, "image_size": self.image_size,
                "channels": self.channels, "labelled": self.labelled, "num_labels": self.num_labels,
                "classes": self.classes, "cache": absolute_uri(self.cache.uri), "cache_built_s": self.built_s}


# --------------------------------------------------------------------------------------------- entry
@contextlib.contextmanager
def _ray_errors(where: str):
    """Errors while reading data become one line: a PipelineError from a Ray task comes out as
    itself, anything else (an unreadable Parquet file, mixed schemas) as 'cannot read' naming ``where``."""
    try:
        yield
    except (PipelineError, StorageError):
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps errors raised in its tasks
        line = user_error_line(exc)
        err = PipelineError(line) if line else None
        if err is None:
            err = PipelineError(f"{where}: cannot read the training data ({last_error_line(exc)})")
        raise err from None


@contextlib.contextmanager
def _quiet_ray_data():
    """Ray Data logs an INFO line per execution; keep them off the user's terminal while we read."""
    log = logging.getLogger("ray.data")
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


def _cache_root(storage: StorageSpec | None) -> str:
    """Where data caches go: under storage.root (shared by every node of a cluster, as checkpoints are), else
    (a call without a job's storage) a folder in the temp dir."""
    return storage.root if storage is not None else os.path.join(tempfile.gettempdir(), "aigc-data-cache")


def _source_uri(spec: DataSpec) -> str | None:
    if spec.uri is None and spec.source == "fashion-mnist":
        return FASHION_DIR
    if spec.uri is None and spec.source == "mnist-5k":
        return mnist5k_path()
    return spec.uri


def load_data(spec: DataSpec, model: ModelSpec, storage: StorageSpec | None = None,
              reader: Reader | None = None) -> TrainData:
    """Read, decode and resize the training data once, through Ray Data, into its data cache (or find the cache
    a previous run wrote for the same source); returns where it is and what it holds.

    ``reader(spec, model, storage) -> (dataset, classes)`` reads a source of another modality into the
    same rows (an audio family's clips as their log-mel pictures, :mod:`pipeline.audio.data`).
    Needs a running Ray (see :func:`pipeline.runtime.ensure_ray`).
    """
    if spec.uri and uri_scheme(spec.uri) == "memory":
        raise PipelineError(f"train.data.uri: {spec.uri}: memory:// lives in one process; Ray workers cannot read it "
                            "(use a local path, s3:// or gs://)")
    where = spec.uri or spec.source
    described = {**spec.model_dump(mode="json", exclude={"shuffle_window"}), "image_size": model.image_size,
                 "channels": model.channels, "reader": getattr(reader, "__qualname__", None),
                 "num_classes": model.num_classes if getattr(model, "conditional", False) else None}
    if spec.source == "digits":
        import sklearn

        described["sklearn"] = sklearn.__version__
    root = _cache_root(storage)
    key = cache_key(described, source_listing(_source_uri(spec), storage))
    cache = open_cache(root, key, storage)
    started, built_s = time.perf_counter(), None
    if cache is None:
        with _quiet_ray_data(), _ray_errors(where):
            if reader is not None:
                ds, classes = reader(spec, model, storage)
            elif spec.source == "digits":
                ds, classes = digits_dataset(spec, model)
            elif spec.source == "images":
                ds, classes = images_dataset(spec, model, storage)
            elif spec.source == "parquet":
                ds, classes = parquet_dataset(spec, model, storage)
            elif spec.source in RAW_SOURCES:
                ds, classes = raw_dataset(spec, model, storage)
            else:  # another modality's source needs its family's reader
                raise PipelineError(f"train.data.source: '{spec.source}' is not an image source "
                                    f"({', '.join(IMAGE_SOURCES)}); the model's family reads it")
            ds.context.execution_options.preserve_order = True  # source order: the cache's, whatever Ray schedules
            batches = iter(ds.iter_batches(batch_size=BLOCK_ROWS, batch_format="numpy"))
            try:
                header = f"{spec.source}:{model.image_size}:{model.channels}\n"
                cache = write_cache(batches, root, key, storage, header, classes, where=where)
            finally:  # a failed read's executor shut down now, not when its traceback is collected
                close = getattr(batches, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        close()
        built_s = round(time.perf_counter() - started, 2)
    return TrainData(cache=cache, count=cache.count, fingerprint=cache.fingerprint, source=spec.source,
                     uri=spec.uri, image_size=model.image_size, channels=model.channels, labelled=cache.labelled,
                     num_labels=cache.num_labels, classes=cache.classes, storage=storage, window=spec.shuffle_window,
                     built_s=built_s)


def read_all(data: TrainData) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of a training set in source order: (uint8 images N×C×S×S, int64 labels). For evaluation and
    tests; training streams instead (:meth:`TrainData.stream`)."""
    stream = data.stream()
    try:
        return stream.read_all()
    finally:
        stream.close()
