"""The image sources as Ray Data datasets of decoded rows: the embedded digits, a folder of images, Parquet,
and the pixel arrays of :mod:`pipeline.image.sources` (IDX, pixel tables, presets), from any URI.

Every row has

* ``key``   a stable name (digits index, file path, row position, or content hash for Parquet rows),
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
* ``idx``, ``pixels``, ``fashion-mnist``, ``mnist-5k``: :mod:`pipeline.image.sources`.

Images are converted to the model's channels, centre-cropped to a square and resized. Any
problem (no images, unreadable or undecodable file, bad label) is a :class:`PipelineError`
naming the URI or the file. :mod:`pipeline.image.trainset` writes these rows into the data cache
that training streams.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from typing import Any, Callable

import numpy as np
import torch

import pipeline.runtime  # noqa: F401 - sets Ray's loopback env before anything imports Ray
from pipeline.checks import background_rgb
from pipeline.errors import PipelineError, StorageError
from pipeline.image.sources import read_raw, read_source_file
from pipeline.specs.schema import DataSpec, StorageSpec
from pipeline.storage import open_fs, pyarrow_fs

# `model` below is an image family's configuration: what is read is its image_size and channels,
# and, when it is conditional, its num_classes (the range labels must lie in).
ModelSpec = Any
# a modality's own source: (train.data, model, storage) -> (Ray Data dataset of the rows above, class names)
Reader = Callable[[DataSpec, Any, Any], tuple[Any, list[str]]]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
NO_LABEL = -1
BLOCK_ROWS = 256  # rows per Ray Data block/batch when decoding


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


def digits_dataset(spec: DataSpec, model: ModelSpec):
    import ray.data

    raw, labels = _raw_digits(spec.limit)
    items = [{"index": i, "raw": r, "label": int(label)} for i, (r, label) in enumerate(zip(raw, labels))]
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // BLOCK_ROWS)))
    return ds.map_batches(_decode_digits, batch_format="numpy", batch_size=BLOCK_ROWS,
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


def _decode_files(batch: dict[str, np.ndarray], fs: Any, uri: str, size: int, channels: int,
                  background: tuple[int, int, int]) -> dict[str, np.ndarray]:
    images = []
    for path, rel in zip(batch["path"], batch["rel"]):
        name = f"{uri.rstrip('/')}/{rel}"
        images.append(decode_image(read_source_file(fs, path, name), size, channels, name, background))
    return _rows([str(r) for r in batch["rel"]], images, [int(x) for x in batch["label"]])


def images_dataset(spec: DataSpec, model: ModelSpec, storage: StorageSpec | None):
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


def parquet_dataset(spec: DataSpec, model: ModelSpec, storage: StorageSpec | None):
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
    ds = ds.map_batches(_decode_parquet, batch_format="pyarrow", batch_size=BLOCK_ROWS,
                        fn_kwargs={"uri": spec.uri, "image_column": spec.image_column, "label_column": label_column,
                                   "size": model.image_size, "channels": model.channels, "num_classes": num_classes,
                                   "background": background_rgb(spec.background or "white")})
    return ds, []


# --------------------------------------------------------------------------------------------- pixel arrays
def _decode_raw(batch: dict[str, np.ndarray], size: int, channels: int) -> dict[str, np.ndarray]:
    from PIL import Image

    raw = np.asarray(batch["raw"], dtype=np.uint8)
    if raw.shape[1:] == (size, size) and channels == 1:
        images = list(raw[:, None])  # stored at the model's size: the pixels as they are
    else:
        images = [_fit(Image.fromarray(r, mode="L"), size, channels) for r in raw]
    return _rows([str(k) for k in batch["key"]], images, [int(x) for x in batch["label"]])


def raw_dataset(spec: DataSpec, model: ModelSpec, storage: StorageSpec | None):
    """IDX files, pixel tables and the presets (:mod:`pipeline.image.sources`): read and checked on the driver,
    resized in Ray Data tasks."""
    import pyarrow as pa
    import ray.data

    num_classes = model.num_classes if getattr(model, "conditional", False) else None
    raw = read_raw(spec, storage, num_classes)
    n, h, w = raw.images.shape
    labels = raw.labels if raw.labels is not None else np.full(n, NO_LABEL, np.int64)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(raw.images.reshape(-1), pa.uint8()), h * w)
    table = pa.table({"key": [raw.key(i) for i in range(n)], "raw": flat, "label": pa.array(labels, pa.int64())})
    ds = ray.data.from_arrow(table).repartition(max(1, -(-n // (8 * BLOCK_ROWS))))

    def unflatten(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch["raw"] = np.stack(batch["raw"]).reshape(-1, h, w) if batch["raw"].dtype == object \
            else batch["raw"].reshape(-1, h, w)
        return _decode_raw(batch, model.image_size, model.channels)

    return ds.map_batches(unflatten, batch_format="numpy", batch_size=BLOCK_ROWS), raw.classes
