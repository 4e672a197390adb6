"""Training rows streamed to each Ray Train worker, in a seeded order, with memory that does not grow with the data.

The decoded training set (rows of ``key``, ``image`` uint8 (C, S, S), ``label``) is written once, by
the driver, into a **data cache** of Parquet files under ``<storage.root>/cache/data/<key>/``: Ray Data
tasks decode and resize the source in parallel (on any node), the driver takes their output in source
order and writes it as files of row groups of :data:`GROUP_ROWS` rows, hashing every row on the way for
the data fingerprint. ``<key>`` names the source (spec, model size and channels, and the listing of its
files: names, sizes, modification times), so every later run, resume and evaluation on the same data
reads the cache instead of decoding again. Nothing is held whole: the driver keeps a file's worth of
rows, each worker a shuffle window.

Each epoch, every worker streams its own part (:func:`epoch_slices`):

1. the row groups are put in an order seeded by ``(train.seed, epoch)``, the same on every rank;
2. their rows, in that order, are cut into ``world`` equal contiguous ranges (padded from the start,
   like torch's ``DistributedSampler``, so every rank takes the same number of steps); rank r reads
   only the row groups its range touches;
3. the rank's rows pass through a **shuffle window** of ``train.data.shuffle_window`` rows, each
   window permuted by a generator seeded by ``(train.seed, epoch, rank)``; batches are cut from the
   permuted windows in turn.

So an epoch's batches are a function of (seed, epoch, rank, world) and the cache alone: a run resumed
at epoch k trains exactly what an uninterrupted run trains from epoch k, and no worker ever holds more
than one window (plus the next one, read ahead on a thread). A set smaller than the window is shuffled
whole on each rank, every epoch.

Why not Ray Data's ``streaming_split`` (Ray Train's ``get_dataset_shard`` with a split dataset): it
hands blocks to whichever worker asks first, so which rows a rank gets, and in what order, depends on
timing; neither the run nor a resume would be reproducible.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from pipeline.errors import PipelineError, StorageError
from pipeline.layout import data_cache_uri
from pipeline.storage import Store, open_fs
from pipeline.train.worker import mix

CACHE_FORMAT = 1
GROUP_ROWS = 512  # rows per row group: the unit an epoch's order permutes and a worker reads
FILE_BYTES = 32 << 20  # pixel bytes per cache file (a whole number of row groups)
CACHE_JSON = "cache.json"
SUCCESS = "_SUCCESS"


@dataclass
class DataCache:
    """A written data cache: where it is, its files and row groups, and what the rows are."""

    uri: str
    files: list[dict]  # [{"name": "part-000000.parquet", "groups": [rows, ...]}, ...] in source order
    count: int
    shape: list[int]  # (channels, size, size)
    fingerprint: str
    labelled: bool
    num_labels: int
    classes: list[str] = field(default_factory=list)
    format: int = CACHE_FORMAT

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("uri")
        return out

    @classmethod
    def from_json(cls, obj: dict, uri: str) -> DataCache:
        return cls(uri=uri, **{k: obj[k] for k in ("files", "count", "shape", "fingerprint", "labelled",
                                                   "num_labels", "classes", "format")})

    def units(self) -> list[tuple[int, int, int, int]]:
        """Every row group as (file index, group index, first row in source order, rows)."""
        out, start = [], 0
        for f, rec in enumerate(self.files):
            for g, rows in enumerate(rec["groups"]):
                out.append((f, g, start, int(rows)))
                start += int(rows)
        return out


# --------------------------------------------------------------------------------------------- the key
def source_listing(uri: str | None, storage: Any) -> list[list]:
    """What identifies a source's files without reading them: (name, size, mtime or ETag) of each."""
    if uri is None:
        return []
    try:
        fs, path = open_fs(uri, storage)
        if not fs.exists(path):
            return [[uri, "missing"]]
        found = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    except (StorageError, PipelineError):
        raise
    except Exception:  # noqa: BLE001 - the reader names an unreadable source in its own words
        return [[uri, "unlisted"]]
    out = []
    for name, info in sorted(found.items()):
        stamp = info.get("mtime") or info.get("ETag") or info.get("LastModified") or info.get("updated") or ""
        out.append([name, int(info.get("size") or 0), str(stamp)])
    return out


def cache_key(source: dict, listing: list) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "source": source, "listing": listing}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------------------------- writing (driver)
def _file_rows(shape: tuple[int, ...], group_rows: int) -> int:
    groups = max(1, FILE_BYTES // max(1, math.prod(shape) * group_rows))
    return groups * group_rows


def _write_file(store: Store, name: str, keys: list[str], images: np.ndarray, labels: np.ndarray,
                group_rows: int) -> list[int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    width = int(math.prod(images.shape[1:]))
    flat = pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(images),
                                                [None, pa.py_buffer(np.ascontiguousarray(images).tobytes())])
    table = pa.table({"key": pa.array(keys, pa.string()), "image": flat, "label": pa.array(labels, pa.int64())})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=group_rows, compression="zstd")
    store.write(name, buf.getvalue())
    return [min(group_rows, len(images) - i) for i in range(0, len(images), group_rows)]


def open_cache(root: str, key: str, storage: Any) -> DataCache | None:
    """The cache ``key`` under ``root`` when it is complete, else None."""
    store = Store(data_cache_uri(root, key), storage)
    if not store.exists(SUCCESS):
        return None
    try:
        return DataCache.from_json(store.read_json(CACHE_JSON), store.uri)
    except (KeyError, TypeError, ValueError, StorageError):
        return None  # unreadable or another format: write it again


def write_cache(batches: Iterator[dict[str, np.ndarray]], root: str, key: str, storage: Any, header: str,
                classes: list[str], group_rows: int = GROUP_ROWS, where: str = "the source") -> DataCache:
    """Write decoded rows (``key``, ``image``, ``label``, ``sha`` batches, in source order) as the cache ``key``.

    The fingerprint hashes ``header`` and every row's (key, sha, label) in that order. ``_SUCCESS`` last.
    """
    store = Store(data_cache_uri(root, key), storage)
    h = hashlib.sha256(header.encode())
    files: list[dict] = []
    pending: list[dict[str, np.ndarray]] = []
    held = count = 0
    shape: tuple[int, ...] | None = None
    labels_seen: list[int] = [0, -1]  # (any unlabelled row, largest label)

    def flush(rows: int) -> None:
        nonlocal pending, held
        keys = [str(k) for b in pending for k in b["key"]]
        images = np.concatenate([b["image"] for b in pending])
        labels = np.concatenate([b["label"] for b in pending]).astype(np.int64)
        name = f"part-{len(files):06d}.parquet"
        groups = _write_file(store, name, keys[:rows], images[:rows], labels[:rows], group_rows)
        files.append({"name": name, "groups": groups})
        rest = {"key": np.array(keys[rows:], dtype=object), "image": images[rows:], "label": labels[rows:]}
        pending = [rest] if len(rest["key"]) else []
        held = len(rest["key"])

    for batch in batches:
        image = np.asarray(batch["image"], dtype=np.uint8)
        if shape is None:
            shape = tuple(image.shape[1:])
        label = np.asarray(batch["label"], dtype=np.int64)
        for k, sha, lab in zip(batch["key"], batch["sha"], label):
            h.update(f"{k}\t{sha}\t{int(lab)}\n".encode())
        labels_seen[0] |= int((label < 0).any())
        labels_seen[1] = max(labels_seen[1], int(label.max(initial=-1)))
        pending.append({"key": batch["key"], "image": image, "label": label})
        held += len(image)
        count += len(image)
        while shape is not None and held >= _file_rows(shape, group_rows):
            flush(_file_rows(shape, group_rows))
    if held:
        flush(held)
    if count == 0 or shape is None:
        raise PipelineError(f"{where}: the dataset is empty (no rows to train on)")
    labelled = not labels_seen[0]
    cache = DataCache(uri=store.uri, files=files, count=count, shape=list(shape), fingerprint=h.hexdigest(),
                      labelled=labelled, num_labels=labels_seen[1] + 1 if labelled else 0, classes=list(classes))
    store.write_json(CACHE_JSON, cache.to_json())
    store.write(SUCCESS, b"")
    return cache


# --------------------------------------------------------------------------------------------- the order
def epoch_slices(unit_rows: list[int], epoch: int, rank: int, world: int, seed: int) -> list[tuple[int, int, int]]:
    """Rank ``rank``'s part of an epoch: [(unit, first row in it, end row)], in the order it reads them.

    The units are permuted by (seed, epoch); their rows, in that order, are cut into ``world``
    contiguous ranges of ceil(total / world) rows, the last padded from the start.
    """
    total = sum(unit_rows)
    if total == 0:
        return []
    order = torch.randperm(len(unit_rows), generator=torch.Generator().manual_seed(mix(seed, "units", epoch)))
    per = -(-total // world)
    lo, hi = rank * per, (rank + 1) * per
    out: list[tuple[int, int, int]] = []
    pos = 0
    while pos < hi:  # walks the permuted units, wrapping round for the padding
        for u in order.tolist():
            rows = unit_rows[u]
            a, b = max(lo, pos), min(hi, pos + rows)
            if a < b:
                out.append((u, a - pos, b - pos))
            pos += rows
            if pos >= hi:
                break
    return out


def _kept(start: int, a: int, b: int, skip_every: int | None) -> int:
    """Rows i in [start + a, start + b) that are kept: all, or those with i % skip_every != skip_every - 1."""
    if not skip_every:
        return b - a
    def skipped_below(x: int) -> int:  # i < x with i % p == p - 1
        return x // skip_every
    return (b - a) - (skipped_below(start + b) - skipped_below(start + a))


# --------------------------------------------------------------------------------------------- reading (workers)
class Stream:
    """A worker's view of the data cache: steps per epoch, an epoch's batches, or all rows."""

    def __init__(self, cache: DataCache, storage: Any, window: int, skip_every: int | None = None):
        self.cache = cache
        self.storage = storage
        self.window = window
        self.skip_every = skip_every  # every k-th row in source order is never trained on (a family's held-out)
        self.units = cache.units()
        self.kept = [_kept(start, 0, rows, skip_every) for _, _, start, rows in self.units]  # rows trained on
        self._fs: Any = None
        self._files: dict[int, Any] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def count(self) -> int:
        """Rows the stream trains on."""
        return sum(self.kept)

    def steps(self, world: int, batch_size: int) -> int:
        """Steps every rank takes per epoch (each rank has ceil(count / world) rows)."""
        return (-(-self.count // world)) // batch_size

    # -- reading
    def _open(self, f: int) -> Any:
        import pyarrow.parquet as pq

        if f in self._files:
            self._files[f] = self._files.pop(f)  # most recently used last: the oldest is the one closed
        else:
            if self._fs is None:
                self._fs, self._root = open_fs(self.cache.uri, self.storage)
            if len(self._files) >= 4:
                old = next(iter(self._files))
                self._files.pop(old).close()
            name = self.cache.files[f]["name"]
            try:
                self._files[f] = pq.ParquetFile(self._fs.open(f"{self._root.rstrip('/')}/{name}", "rb"))
            except Exception as exc:  # noqa: BLE001 - a cache file gone or damaged under a run
                raise PipelineError(f"{self.cache.uri}/{name}: cannot read the training data cache "
                                    f"({type(exc).__name__}: {exc}); delete the folder to rebuild it") from None
        return self._files[f]

    def read_unit(self, u: int, a: int = 0, b: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Kept rows [a, b) of unit ``u`` (held-out rows dropped first) as (uint8 (n, C, S, S), int64 labels)."""
        f, g, start, rows = self.units[u]
        table = self._open(f).read_row_group(g, columns=["image", "label"])
        col = table.column("image").combine_chunks()
        width = int(math.prod(self.cache.shape))
        raw = np.frombuffer(col.buffers()[1], dtype=np.uint8, count=width * (col.offset + len(col)))
        images = raw[col.offset * width:].reshape(-1, *self.cache.shape)
        labels = table.column("label").to_numpy()
        if self.skip_every:
            keep = (np.arange(start, start + rows) % self.skip_every) != self.skip_every - 1
            images, labels = images[keep], labels[keep]
        return images[a:b], labels[a:b]

    def read_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row in source order (for evaluation and small sets): (uint8 N×C×S×S, int64 labels)."""
        parts = [self.read_unit(u) for u in range(len(self.units))]
        return (torch.from_numpy(np.concatenate([p[0] for p in parts])),
                torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64)))

    def _windows(self, slices: list[tuple[int, int, int]], gen: torch.Generator) -> Iterator[tuple[np.ndarray, ...]]:
        """The rank's rows in permuted windows of ``self.window`` rows (the next one read ahead on a thread)."""
        groups: list[list[tuple[int, int, int]]] = [[]]
        held = 0
        for s in slices:
            groups[-1].append(s)
            held += s[2] - s[1]
            if held >= self.window:
                groups.append([])
                held = 0

        def read(group: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
            parts = [self.read_unit(u, a, b) for u, a, b in group]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

        groups = [g for g in groups if g]
        if self._pool is None:  # one reader thread for the stream's life: its buffers stay in one malloc arena
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aigc-stream")
        ahead = self._pool.submit(read, groups[0]) if groups else None
        try:
            for i in range(len(groups)):
                images, labels = ahead.result()
                ahead = self._pool.submit(read, groups[i + 1]) if i + 1 < len(groups) else None
                perm = torch.randperm(len(images), generator=gen).numpy()
                yield images[perm], labels[perm]
        finally:  # an epoch left early (the loop took its steps): the read in flight is dropped or waited for
            if ahead is not None and not ahead.cancel():
                ahead.exception()

    def epoch(self, epoch: int, rank: int, world: int, batch_size: int, seed: int
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's batches of an epoch: (uint8 images, int64 labels), ``steps(world, batch_size)`` of them."""
        steps = self.steps(world, batch_size)
        slices = epoch_slices(self.kept, epoch, rank, world, seed)
        gen = torch.Generator().manual_seed(mix(seed, "window", epoch, rank))
        carry_x: list[np.ndarray] = []
        carry_y: list[np.ndarray] = []
        held = done = 0
        for images, labels in self._windows(slices, gen):
            carry_x.append(images)
            carry_y.append(labels)
            held += len(images)
            if held < batch_size:
                continue
            x, y = np.concatenate(carry_x), np.concatenate(carry_y)
            cut = (len(x) // batch_size) * batch_size
            for i in range(0, cut, batch_size):
                if done == steps:
                    return
                yield torch.from_numpy(x[i:i + batch_size].copy()), torch.from_numpy(y[i:i + batch_size].copy())
                done += 1
            carry_x, carry_y, held = [x[cut:]], [y[cut:]], len(x) - cut
        if done < steps:  # cannot happen: steps is the fewest any rank's rows give
            raise PipelineError(f"{self.cache.uri}: rank {rank} ran out of rows after {done} of {steps} steps")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for f in self._files.values():
            f.close()
        self._files.clear()
