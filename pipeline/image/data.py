"""Training data as Ray Data datasets: the embedded digits, a folder of images, or Parquet, from any URI.

:func:`load_data` turns a :class:`~pipeline.specs.DataSpec` into a :class:`TrainData`: a
materialized Ray Data dataset whose rows are already decoded and resized (once, in Ray Data
tasks), plus a content fingerprint for ``model.json``. Every row has

* ``key``   a stable sort key (digits index, file path, or content hash for Parquet rows),
* ``image`` uint8 array (channels, size, size),
* ``label`` int64 class id, or -1 when the data has no labels,
* ``sha``   sha256 of the decoded pixels and the label.

Sources:

* ``digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 handwritten digits, labels 0-9),
  scaled to 0-255 and resized to the model's ``image_size``.
* ``images``: PNG/JPEG files under a folder at any fsspec URI. When every image sits in a
  first-level subfolder, the sorted subfolder names are the classes (label = index).
* ``parquet``: a column of image bytes (``bytes`` or a ``{bytes, path}`` struct, as Hugging Face
  datasets write it) plus an optional integer label column.

Images are converted to the model's channels, centre-cropped to a square and resized. Any
problem (no images, unreadable or undecodable file, bad label) is a :class:`PipelineError`
naming the URI or the file. Try it::

    python -c "from pipeline.runtime import ensure_ray; ensure_ray(); \
from pipeline.image.data import load_data; from pipeline.specs import DataSpec, DCGANConfig; \
print(load_data(DataSpec(limit=100), DCGANConfig()).summary())"
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import posixpath
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

import pipeline.runtime  # noqa: F401 - sets Ray's loopback env before anything imports Ray
from pipeline.checks import background_rgb, uri_scheme
from pipeline.errors import PipelineError, StorageError, last_error_line, user_error_line
from pipeline.specs.schema import DataSpec, StorageSpec
from pipeline.storage import absolute_uri, open_fs

# `model` below is an image family's configuration: what is read is its image_size and channels,
# and, when it is conditional, its num_classes (the range labels must lie in).
ModelSpec = Any
# a modality's own source: (train.data, model, storage) -> (Ray Data dataset of the rows above, class names)
Reader = Callable[[DataSpec, Any, Any], tuple[Any, list[str]]]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
NO_LABEL = -1
_BLOCK_ROWS = 256  # rows per Ray Data block/batch when decoding


@dataclass
class TrainData:
    """A decoded, resized, materialized training set and what identifies it."""

    dataset: Any  # ray.data.MaterializedDataset with columns key, image, label, sha
    count: int
    fingerprint: str
    source: str
    uri: str | None
    image_size: int
    channels: int
    labelled: bool
    num_labels: int = 0  # largest label + 1 (0 when unlabelled)
    classes: list[str] = field(default_factory=list)  # class names by label id, when known

    def summary(self) -> dict:
        """What model.json records about the data."""
        return {"source": self.source, "uri": absolute_uri(self.uri) if self.uri else None, "count": self.count,
                "unit": "images", "fingerprint": self.fingerprint, "image_size": self.image_size,
                "channels": self.channels, "labelled": self.labelled, "num_labels": self.num_labels,
                "classes": self.classes}


# --------------------------------------------------------------------------------------------- pixels
def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] → uint8 [0, 255]."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _to_8bit(img: Any) -> Any:
    """16- and 32-bit greyscale (``I;16``, ``I``) scaled to 8 bits; Pillow's own convert("L") clips them."""
    from PIL import Image

    if img.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return img
    arr = np.asarray(img)
    # a 16-bit PNG spans 0..65535 whichever of these modes Pillow opens it in; wider data by its own range
    top = max(65535.0, float(arr.max(initial=0)))
    return Image.fromarray(np.clip(np.round(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def _fit(img: Any, size: int, channels: int, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """A PIL image → uint8 (channels, size, size): upright, 8-bit, alpha composited, centre-cropped, resized.

    * EXIF orientation is applied (a phone photo stored on its side comes out upright);
    * 16-bit greyscale is scaled to 8 bits, not clipped;
    * transparency (RGBA, LA, a palette's transparent index) is composited on ``background``, except with
      4 channels: straight RGBA, resized premultiplied, fully transparent pixels (0, 0, 0, 0) (README: Alpha).
    """
    from PIL import Image, ImageOps

    img = _to_8bit(ImageOps.exif_transpose(img))
    if channels != 4 and (img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
                          or (img.mode in ("L", "RGB") and "transparency" in img.info)):
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (*background, 255))
        flat.alpha_composite(rgba)
        img = flat
    img = img.convert({1: "L", 3: "RGB", 4: "RGBA"}[channels])
    if img.size != (size, size):
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)
    arr = np.asarray(img, dtype=np.uint8)
    arr = np.where(arr[:, :, 3:] == 0, np.uint8(0), arr) if channels == 4 else arr  # no colour under alpha 0
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def decode_image(data: bytes, size: int, channels: int, name: str,
                 background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """PNG/JPEG bytes → uint8 (channels, size, size); a bad image is a PipelineError naming ``name``."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise PipelineError(f"{name}: empty file, not an image")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now: a truncated file fails here, not later
            if img.width < 1 or img.height < 1:
                raise PipelineError(f"{name}: image has no pixels")
            return _fit(img, size, channels, background)
    except PipelineError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise PipelineError(f"{name}: not a decodable PNG/JPEG image ({first})") from None


def _row_sha(image: np.ndarray, label: int) -> str:
    h = hashlib.sha256(np.ascontiguousarray(image).tobytes())
    h.update(str(int(label)).encode())
    return h.hexdigest()


def _rows(keys: list[str], images: list[np.ndarray], labels: list[int]) -> dict[str, np.ndarray]:
    return {"key": np.array(keys, dtype=object), "image": np.stack(images),
            "label": np.asarray(labels, dtype=np.int64),
            "sha": np.array([_row_sha(i, label) for i, label in zip(images, labels)], dtype=object)}


def pyarrow_fs(fs: Any) -> Any:
    """An fsspec filesystem as a pyarrow one (what Ray Data and Ray Train take)."""
    import pyarrow.fs as pafs

    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


# --------------------------------------------------------------------------------------------- digits
def _raw_digits(limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    raw = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 → 0..255, (N, 8, 8)
    labels = d.target.astype(np.int64)
    return (raw[:limit], labels[:limit]) if limit else (raw, labels)


def _resize_digits(raw: np.ndarray, size: int, channels: int) -> np.ndarray:
    from PIL import Image

    return np.stack([_fit(Image.fromarray(r, mode="L"), size, channels) for r in raw])


def digits_arrays(image_size: int = 32, channels: int = 1, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The embedded digits without Ray: uint8 (N, channels, S, S) and int64 labels.

    Same pixels as the Ray Data path (same resize function), for classifiers and baselines.
    """
    raw, labels = _raw_digits(limit)
    return _resize_digits(raw, image_size, channels), labels


def _decode_digits(batch: dict[str, np.ndarray], size: int, channels: int) -> dict[str, np.ndarray]:
    images = list(_resize_digits(batch["raw"], size, channels))
    keys = [f"digits/{int(i):05d}" for i in batch["index"]]
    return _rows(keys, images, [int(x) for x in batch["label"]])


def _digits_dataset(spec: DataSpec, model: ModelSpec):
    import ray.data

    raw, labels = _raw_digits(spec.limit)
    items = [{"index": i, "raw": r, "label": int(label)} for i, (r, label) in enumerate(zip(raw, labels))]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // _BLOCK_ROWS)))
    return ds.map_batches(_decode_digits, batch_format="numpy", batch_size=_BLOCK_ROWS,
                          fn_kwargs={"size": model.image_size, "channels": model.channels}), [str(i) for i in range(10)]


# --------------------------------------------------------------------------------------------- images
def _list_images(uri: str, storage: StorageSpec | None) -> tuple[Any, list[tuple[str, str, int]], list[str]]:
    """(fs, [(path, relpath, size)], classes): the sorted image files under ``uri`` and their classes."""
    try:
        fs, root = open_fs(uri, storage)
        if not fs.exists(root):
            raise PipelineError(f"{uri}: not found")
        if not fs.isdir(root):
            raise PipelineError(f"{uri}: is a file; train.data.uri must be a folder of PNG/JPEG images")
        found = fs.find(root, detail=True)
    except (StorageError, PipelineError):
        raise
    except Exception as exc:  # noqa: BLE001 - any backend's listing error
        raise PipelineError(f"{uri}: cannot list the folder ({type(exc).__name__}: {exc})") from None
    prefix = root.rstrip("/") + "/"
    files = []
    for path, info in found.items():
        rel = path[len(prefix):] if path.startswith(prefix) else posixpath.basename(path)
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and folders (.DS_Store, .ipynb_checkpoints)
        if info.get("type", "file") == "file" and rel.lower().endswith(IMAGE_EXTENSIONS):
            files.append((path, rel, int(info.get("size") or 0)))
    files.sort(key=lambda f: f[1])
    if not files:
        raise PipelineError(f"{uri}: no PNG/JPEG images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    labelled = all("/" in rel for _, rel, _ in files)
    classes = sorted({rel.split("/", 1)[0] for _, rel, _ in files}) if labelled else []
    return fs, files, classes


def read_source_file(fs: Any, path: str, name: str) -> bytes:
    """One training file's bytes; any backend's read error as one line naming the file (``name``)."""
    try:
        return fs.cat_file(path)
    except Exception as exc:  # noqa: BLE001 - any backend's read error
        raise PipelineError(f"{name}: cannot read ({type(exc).__name__}: {exc})") from None


def _decode_files(batch: dict[str, np.ndarray], fs: Any, uri: str, size: int, channels: int,
                  background: tuple[int, int, int]) -> dict[str, np.ndarray]:
    images = []
    for path, rel in zip(batch["path"], batch["rel"]):
        name = f"{uri.rstrip('/')}/{rel}"
        images.append(decode_image(read_source_file(fs, path, name), size, channels, name, background))
    return _rows([str(r) for r in batch["rel"]], images, [int(x) for x in batch["label"]])


def _images_dataset(spec: DataSpec, model: ModelSpec, storage: StorageSpec | None):
    import ray.data

    assert spec.uri
    fs, files, classes = _list_images(spec.uri, storage)
    if spec.limit:
        files = files[: spec.limit]
    class_id = {c: i for i, c in enumerate(classes)}
    items = [{"path": p, "rel": rel, "label": class_id[rel.split("/", 1)[0]] if classes else NO_LABEL}
             for p, rel, _ in files]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // 64)))
    # The fsspec filesystem pickles with its options (endpoint, credentials), so Ray Data tasks
    # on any node read the same store without depending on their environment.
    return ds.map_batches(_decode_files, batch_format="numpy", batch_size=64,
                          fn_kwargs={"fs": fs, "uri": spec.uri, "size": model.image_size,
                                     "channels": model.channels,
                                     "background": background_rgb(spec.background or "white")}), classes


# --------------------------------------------------------------------------------------------- parquet
def _cell_bytes(value: Any) -> bytes | None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
        return bytes(value["bytes"])
    return None


def _decode_parquet(table: Any, uri: str, image_column: str, label_column: str | None,
                    size: int, channels: int, num_classes: int | None,
                    background: tuple[int, int, int]) -> dict[str, np.ndarray]:
    cells = table.column(image_column).to_pylist()
    paths = table.column("path").to_pylist() if "path" in table.column_names else [uri] * len(cells)
    raw_labels = table.column(label_column).to_pylist() if label_column else [NO_LABEL] * len(cells)
    keys, images, labels = [], [], []
    for cell, path, label in zip(cells, paths, raw_labels):
        name = f"{path} (column '{image_column}')"
        data = _cell_bytes(cell)
        if data is None:
            raise PipelineError(f"{name}: a value is {type(cell).__name__}, "
                                f"not image bytes or a {{bytes, path}} struct")
        if label_column:
            if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
                raise PipelineError(f"{path}: column '{label_column}': labels must be integers, got {label!r}")
            if label < 0 or (num_classes is not None and label >= num_classes):
                raise PipelineError(f"{path}: column '{label_column}': label {label} is outside "
                                    f"0..{(num_classes or 1) - 1}"
                                    " (train.model.num_classes)")
        images.append(decode_image(data, size, channels, name, background))
        labels.append(int(label))
        # Parquet rows have no stable name; the raw bytes (+ label) are their identity. Equal keys
        # mean identical rows, so any order among them gives the same training data.
        keys.append(f"{hashlib.sha256(data).hexdigest()}:{int(label)}")
    return _rows(keys, images, labels)


def _parquet_dataset(spec: DataSpec, model: ModelSpec, storage: StorageSpec | None):
    import pyarrow.parquet as pq
    import ray.data

    assert spec.uri
    try:
        fs, path = open_fs(spec.uri, storage)
        if not fs.exists(path):
            raise PipelineError(f"{spec.uri}: not found")
        files = sorted(p for p in (fs.find(path) if fs.isdir(path) else [path]) if p.endswith(".parquet")
                       and not any(part.startswith((".", "_")) for part in p[len(path):].split("/") if part))
        if not files:
            raise PipelineError(f"{spec.uri}: no .parquet files found")
        with fs.open(files[0], "rb") as f:
            schema = pq.read_schema(f)
    except (StorageError, PipelineError):
        raise
    except Exception as exc:  # noqa: BLE001 - unreadable or not Parquet
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise PipelineError(f"{spec.uri}: cannot read Parquet ({type(exc).__name__}: {first})") from None
    if spec.image_column not in schema.names:
        raise PipelineError(f"{spec.uri}: no column '{spec.image_column}' (train.data.image_column); "
                            f"columns are {', '.join(schema.names)}")
    label_column = spec.label_column if spec.label_column and spec.label_column in schema.names else None
    columns = [spec.image_column] + ([label_column] if label_column else [])
    pa_fs = pyarrow_fs(fs)
    ds = ray.data.read_parquet(files, filesystem=pa_fs, include_paths=True).select_columns(columns + ["path"])
    if spec.limit:
        ds.context.execution_options.preserve_order = True  # "the first N rows" in file order
        ds = ds.limit(spec.limit)
    num_classes = model.num_classes if getattr(model, "conditional", False) else None
    ds = ds.map_batches(_decode_parquet, batch_format="pyarrow", batch_size=_BLOCK_ROWS,
                        fn_kwargs={"uri": spec.uri, "image_column": spec.image_column, "label_column": label_column,
                                   "size": model.image_size, "channels": model.channels, "num_classes": num_classes,
                                   "background": background_rgb(spec.background or "white")})
    return ds, []


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


def load_data(spec: DataSpec, model: ModelSpec, storage: StorageSpec | None = None,
              reader: Reader | None = None) -> TrainData:
    """Read, decode and resize the training data once through Ray Data; returns it materialized.

    ``reader(spec, model, storage) -> (dataset, classes)`` reads a source of another modality into the
    same rows (an audio family's clips as their log-mel pictures, :mod:`pipeline.audio.data`).
    Needs a running Ray (see :func:`pipeline.runtime.ensure_ray`).
    """
    if spec.uri and uri_scheme(spec.uri) == "memory":
        raise PipelineError(f"train.data.uri: {spec.uri}: memory:// lives in one process; Ray workers cannot read it "
                            "(use a local path, s3:// or gs://)")
    with _quiet_ray_data(), _ray_errors(spec.uri or "digits"):
        if reader is not None:
            ds, classes = reader(spec, model, storage)
        elif spec.source == "digits":
            ds, classes = _digits_dataset(spec, model)
        elif spec.source == "images":
            ds, classes = _images_dataset(spec, model, storage)
        elif spec.source == "parquet":
            ds, classes = _parquet_dataset(spec, model, storage)
        else:  # another modality's source needs its family's reader
            raise PipelineError(f"train.data.source: '{spec.source}' is not an image source (digits, images, "
                                "parquet); the model's family reads it")
        ds = ds.materialize()
        where = spec.uri or "digits"
        if ds.count() == 0:
            raise PipelineError(f"{where}: the dataset is empty (no rows to train on)")
        index = ds.select_columns(["key", "sha", "label"]).take_all()
    index.sort(key=lambda r: (r["key"], r["sha"]))
    h = hashlib.sha256(f"{spec.source}:{model.image_size}:{model.channels}\n".encode())
    for r in index:
        h.update(f"{r['key']}\t{r['sha']}\t{int(r['label'])}\n".encode())
    labelled = all(int(r["label"]) != NO_LABEL for r in index)
    num_labels = max(int(r["label"]) for r in index) + 1 if labelled else 0
    return TrainData(dataset=ds, count=len(index), fingerprint=h.hexdigest(), source=spec.source, uri=spec.uri,
                     image_size=model.image_size, channels=model.channels, labelled=labelled, num_labels=num_labels,
                     classes=classes)


def read_all(batches: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows from a Ray Data iterator (or dataset) → (uint8 images N×C×S×S, int64 labels), sorted by key.

    Sorting by the stable key makes the order independent of how Ray scheduled the blocks, so
    a seeded permutation of it is the same on every run, every worker and after every resume.
    """
    keys: list[str] = []
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for batch in batches.iter_batches(batch_size=4096, batch_format="numpy"):
        keys += [str(k) for k in batch["key"]]
        images.append(np.asarray(batch["image"], dtype=np.uint8))
        labels.append(np.asarray(batch["label"], dtype=np.int64))
    if not keys:
        raise PipelineError("the dataset shard is empty")
    order = np.argsort(np.array(keys, dtype=object), kind="stable")
    return torch.from_numpy(np.concatenate(images)[order]), torch.from_numpy(np.concatenate(labels)[order])
