"""Audio training data (``train.data.source: audio``) as a Ray Data dataset of log-mel pictures.

``train.data.uri`` is either

* a folder of WAV/FLAC files at any fsspec URI; when every file sits in a first-level subfolder, the
  sorted subfolder names are the classes (label = index), as for images; or
* Parquet (a file or a folder of parts) with an audio column (``train.data.audio_column``, default
  ``audio``) of bytes or Hugging Face ``{bytes, path}`` structs, plus an optional integer label column.

Each clip is decoded with libsndfile (``soundfile``), mixed to mono, resampled to 16 kHz
(``scipy.signal.resample_poly``) when it is at another rate, cut or zero-padded to 1 s and turned
into its log-mel picture (:mod:`pipeline.audio.spectrum`), once, in Ray Data tasks. The rows are
those of every image source (:mod:`pipeline.image.data`): ``key``, ``image`` (uint8, 1 x 64 x 64),
``label``, ``sha``; so the image families' training loop, data checks and evaluation take them as they
are. A file that cannot be read or decoded is one line naming it.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
from typing import Any

import numpy as np

from pipeline.errors import PipelineError, StorageError
from pipeline.image.sources import read_source_file
from pipeline.storage import open_fs, pyarrow_fs

AUDIO_EXTENSIONS = (".wav", ".flac")
NO_LABEL = -1
_BLOCK = 64


def decode_clip(data: bytes, name: str) -> np.ndarray:
    """WAV/FLAC bytes → float32 mono samples at 16 kHz, exactly 1 s; a bad file is a PipelineError naming it."""
    import soundfile as sf

    from pipeline.audio.spectrum import CLIP, RATE

    if not data:
        raise PipelineError(f"{name}: empty file, not audio")
    try:
        x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile's errors are RuntimeError/LibsndfileError
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise PipelineError(f"{name}: not a decodable WAV/FLAC file ({first})") from None
    if x.shape[0] == 0:
        raise PipelineError(f"{name}: audio has no samples")
    mono = x.mean(axis=1)
    if rate != RATE:
        from scipy.signal import resample_poly

        g = int(np.gcd(int(rate), RATE))
        mono = resample_poly(mono, RATE // g, int(rate) // g).astype(np.float32)
    out = np.zeros(CLIP, np.float32)
    out[: min(CLIP, len(mono))] = mono[:CLIP]
    return out


def pictures(clips: list[np.ndarray]) -> np.ndarray:
    """Clips → uint8 (N, 1, 64, 64) log-mel pictures, rounded as the image families' data is."""
    import torch

    from pipeline.audio.spectrum import to_image

    with torch.inference_mode():
        img = to_image(torch.from_numpy(np.stack(clips)))
        return ((img + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _rows(keys: list[str], clips: list[np.ndarray], labels: list[int]) -> dict[str, np.ndarray]:
    images = pictures(clips)
    sha = [hashlib.sha256(np.ascontiguousarray(c).tobytes() + str(int(y)).encode()).hexdigest()
           for c, y in zip(clips, labels)]
    return {"key": np.array(keys, dtype=object), "image": images, "label": np.asarray(labels, np.int64),
            "sha": np.array(sha, dtype=object)}


def _decode_files(batch: dict[str, np.ndarray], fs: Any, uri: str) -> dict[str, np.ndarray]:
    clips = []
    for path, rel in zip(batch["path"], batch["rel"]):
        name = f"{uri.rstrip('/')}/{rel}"
        clips.append(decode_clip(read_source_file(fs, path, name), name))
    return _rows([str(r) for r in batch["rel"]], clips, [int(x) for x in batch["label"]])


def _list(uri: str, storage: Any) -> tuple[Any, list[tuple[str, str]], list[str], bool]:
    """(fs, [(path, relpath)], classes, is_parquet) of the audio under ``uri``."""
    try:
        fs, root = open_fs(uri, storage)
        if not fs.exists(root):
            raise PipelineError(f"{uri}: not found")
        if not fs.isdir(root):
            if root.endswith(".parquet"):
                return fs, [(root, posixpath.basename(root))], [], True
            raise PipelineError(f"{uri}: is a file; train.data.uri must be a folder of WAV/FLAC files or Parquet")
        found = fs.find(root)
    except (StorageError, PipelineError):
        raise
    except Exception as exc:  # noqa: BLE001 - any backend's listing error
        raise PipelineError(f"{uri}: cannot list the folder ({type(exc).__name__}: {exc})") from None
    prefix = root.rstrip("/") + "/"
    files = sorted((p, p[len(prefix):]) for p in found if p.startswith(prefix)
                   and not any(part.startswith((".", "_")) for part in p[len(prefix):].split("/")))
    audio = [(p, rel) for p, rel in files if rel.lower().endswith(AUDIO_EXTENSIONS)]
    if audio:
        labelled = all("/" in rel for _, rel in audio)
        return fs, audio, sorted({rel.split("/", 1)[0] for _, rel in audio}) if labelled else [], False
    parts = [(p, rel) for p, rel in files if rel.endswith(".parquet")]
    if parts:
        return fs, parts, [], True
    raise PipelineError(f"{uri}: no WAV/FLAC files or Parquet found (looked for {', '.join(AUDIO_EXTENSIONS)}, "
                        ".parquet)")


def _decode_parquet(table: Any, uri: str, column: str, label_column: str | None,
                    num_classes: int | None) -> dict[str, np.ndarray]:
    cells = table.column(column).to_pylist()
    paths = table.column("path").to_pylist() if "path" in table.column_names else [uri] * len(cells)
    raw = table.column(label_column).to_pylist() if label_column else [NO_LABEL] * len(cells)
    keys, clips, labels = [], [], []
    for cell, path, label in zip(cells, paths, raw):
        data = bytes(cell) if isinstance(cell, (bytes, bytearray)) else \
            bytes(cell["bytes"]) if isinstance(cell, dict) and isinstance(cell.get("bytes"), bytes) else None
        if data is None:
            raise PipelineError(f"{path} (column '{column}'): a value is {type(cell).__name__}, not audio bytes or a "
                                "{bytes, path} struct")
        if label_column and (isinstance(label, bool) or not isinstance(label, int) or label < 0
                             or (num_classes is not None and label >= num_classes)):
            raise PipelineError(f"{path}: column '{label_column}': label {label!r} is not an integer in "
                                f"0..{(num_classes or 1) - 1} (train.model.num_classes)")
        clips.append(decode_clip(data, f"{path} (column '{column}')"))
        labels.append(int(label))
        keys.append(f"{hashlib.sha256(data).hexdigest()}:{int(label)}")  # content is a Parquet row's identity
    return _rows(keys, clips, labels)


def audio_dataset(spec: Any, model: Any, storage: Any) -> tuple[Any, list[str]]:
    """The Ray Data dataset of ``train.data`` (source ``audio``) and its class names."""
    import pyarrow.parquet as pq
    import ray.data

    fs, files, classes, parquet = _list(spec.uri, storage)
    if not parquet:
        if spec.limit:
            files = files[: spec.limit]
        ids = {c: i for i, c in enumerate(classes)}
        items = [{"path": p, "rel": rel, "label": ids[rel.split("/", 1)[0]] if classes else NO_LABEL}
                 for p, rel in files]
        ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // _BLOCK)))
        return ds.map_batches(_decode_files, batch_format="numpy", batch_size=_BLOCK,
                              fn_kwargs={"fs": fs, "uri": spec.uri}), classes
    with fs.open(files[0][0], "rb") as f:
        names = pq.read_schema(f).names
    if spec.audio_column not in names:
        raise PipelineError(f"{spec.uri}: no column '{spec.audio_column}' (train.data.audio_column); columns are "
                            f"{', '.join(names)}")
    label_column = spec.label_column if spec.label_column and spec.label_column in names else None
    ds = ray.data.read_parquet([p for p, _ in files], filesystem=pyarrow_fs(fs), include_paths=True) \
        .select_columns([spec.audio_column] + ([label_column] if label_column else []) + ["path"])
    if spec.limit:
        ds.context.execution_options.preserve_order = True
        ds = ds.limit(spec.limit)
    num_classes = model.num_classes if getattr(model, "conditional", False) else None
    return ds.map_batches(_decode_parquet, batch_format="pyarrow", batch_size=_BLOCK,
                          fn_kwargs={"uri": spec.uri, "column": spec.audio_column, "label_column": label_column,
                                     "num_classes": num_classes}), []
