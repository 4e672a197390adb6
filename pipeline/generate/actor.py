"""The generation actor: loads a model package once, then turns shard rows into committed shards.

Ray Data runs :class:`ShardWorker` on an ``ActorPoolStrategy`` pool, one shard per call. The
actor knows no family: the package's family gives it a **sampler**, an object with

* ``schema``: the ``pyarrow.Schema`` of a shard's Parquet table;
* ``seed_classes``: the number of classes seed items cycle through as labels (``i % classes``),
  or None for a model without them;
* ``__call__(items, path_of) -> list[(files, row)]``: one micro-batch of
  :class:`~pipeline.generate.plan.Item` → per item, its own files by extension (``{"png": b"..."}``,
  or none) and its Parquet row; ``path_of(item_id, ext)`` names where an item's file goes;
* optionally ``counts(rows) -> dict``: figures summed over the shards into the manifest;
* optionally ``micro_batch``: the micro-batch size when the bytes depend on it (it must then come
  from a spec field inside the run's fingerprint), instead of ``generate.scaling.batch_size``.
* optionally ``canonical(ext, data) -> bytes`` and ``canonical_row(row) -> row``: a file (a row)
  without the bytes that no rerun reproduces (a C2PA manifest's random salts); when the sampler
  has them, the shard index records under ``canonical`` the sha256 of each file as it is without
  them (docs/provenance.md, "Determinism").

Every shard's Parquet part carries key-value metadata that marks it AI-generated
(:func:`pipeline.encode.ai_metadata`), whatever the family. With ``webdataset`` among the formats,
each item's own files and its row (as JSON) also go into the shard's tar (:mod:`pipeline.webdataset`,
docs/webdataset.md), whose members' sizes and sha256 the shard index records under ``members``.

Items run in fixed micro-batches of ``generate.scaling.batch_size`` in item order, and each item
draws from its own seeded generator, so the bytes of an item never depend on actor count,
scheduling or retries. The shard's files and Parquet part go straight to storage, then the shard
index commits it; only small summaries travel back through the object store, with the storage
requests the commit sent (``requests_put``, ``requests_get``, ... :data:`REQUEST_KEYS`), which
the driver sums into the manifest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.catalog.registry import implementation
from pipeline.encode import ai_metadata, logical_time, parquet_bytes
from pipeline.errors import PackageError
from pipeline.generate.plan import shard_items
from pipeline.layout import asset_path, part_path, tar_path
from pipeline.package import load_package
from pipeline.specs.schema import StorageSpec
from pipeline.storage import REQUEST_KINDS, Store, WorkerEnv, commit_shard, request_delta, sha256
from pipeline.webdataset import member_records, sample_members, tar_bytes

# The storage requests of committing a shard (Store.requests), as flat numeric columns of the actor's rows:
# column name -> the request kind it counts.
REQUEST_COLUMNS = {f"requests_{k.lower()}": k for k in (*REQUEST_KINDS, "retries")}
REQUEST_KEYS = tuple(REQUEST_COLUMNS)


@dataclass
class ShardConfig:
    """Everything an actor needs, as plain data (it is shipped to every actor once)."""

    model_uri: str
    model_sha256: str
    output: str
    storage: StorageSpec
    job: str
    job_seed: int
    date: str
    formats: list[str]
    batch_size: int
    threads: int
    device: str = "cpu"
    gpu_share: float = 0.0  # the GPUs each actor holds (generate.scaling.num_gpus), for GPU-seconds
    options: Any = None  # the family's sampler options (Implementation.sampler_options)
    env: WorkerEnv = field(default_factory=WorkerEnv)  # storage credentials: in the task, never in a Ray log

    @property
    def created_at(self) -> Any:
        """The run's logical timestamp (midnight UTC of its date), so reruns write the same bytes."""
        return logical_time(self.date)


class ShardWorker:
    """Ray Data callable class: the package loaded once per actor, each call one whole shard."""

    def __init__(self, cfg: ShardConfig):
        import torch

        self._mark = (0.0, time.monotonic())  # (CPU-s, time) at the last shard's end: used() counts from here
        cfg.env.apply()
        torch.set_num_threads(cfg.threads)  # actors share the node: one pool, not N x all cores
        if cfg.device.startswith("cuda"):  # the same kernels for the same shapes: bytes independent of timing
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.cfg = cfg
        pkg = load_package(cfg.model_uri, cfg.storage)
        if pkg.model_sha256 != cfg.model_sha256:  # the package changed under a running job
            raise PackageError(f"{cfg.model_uri}: model changed during the run (sha256 {pkg.model_sha256[:12]}…)")
        self.sampler = implementation(pkg.config).sampler(pkg, cfg)
        self.store = Store(cfg.output, cfg.storage)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"shard": [], "items": [], "files": [], "bytes": [], "cpu_s": [], "gpu_s": [],
                                **{k: [] for k in REQUEST_KEYS}}
        for i in range(len(batch["shard"])):
            summary = self.run_shard({k: batch[k][i] for k in batch})
            for k in out:
                out[k].append(summary[k])
        return out

    def run_shard(self, row: dict[str, Any]) -> dict[str, Any]:
        cfg, sampler = self.cfg, self.sampler
        shard = str(row["shard"])
        items = shard_items(row, cfg.job_seed, sampler.seed_classes)
        files: dict[str, bytes] = {}
        rows: list[dict] = []
        owns: list[tuple[str, dict[str, bytes]]] = []  # (item id, its own files), for the tar
        tar = "webdataset" in cfg.formats
        step = getattr(sampler, "micro_batch", None) or cfg.batch_size  # a family may fix its micro-batch in the spec
        for lo in range(0, len(items), step):
            chunk = items[lo: lo + step]
            for item, (own, table_row) in zip(chunk,
                                              sampler(chunk, lambda item_id, ext: asset_path(shard, item_id, ext))):
                for ext, data in own.items():
                    if ext in cfg.formats:
                        files[asset_path(shard, item.item_id, ext)] = data
                if tar:
                    owns.append((item.item_id, own))
                rows.append(table_row)
        # every family's table says it is AI-generated, in its Parquet key-value metadata
        marks = ai_metadata(job=cfg.job, date=cfg.date, model_sha256=cfg.model_sha256, job_seed=cfg.job_seed,
                            shard=shard, items=len(items), first_item=items[0].item_id if items else None,
                            last_item=items[-1].item_id if items else None)
        if "parquet" in cfg.formats:
            files[part_path(shard)] = self.table(rows, marks)
        meta: dict[str, Any] = {"items": len(items)}
        if tar:
            members = self.members(owns, rows)
            files[tar_path(shard)] = tar_bytes(members, self.mtime)
            meta["members"] = {tar_path(shard): member_records(members)}
        counts = getattr(sampler, "counts", None)
        if counts is not None:
            meta["counts"] = counts(rows)
        if getattr(sampler, "canonical", None) is not None:
            meta["canonical"] = self.canonical(shard, files, rows, marks, owns)
        before = self.store.requests()
        rec = commit_shard(self.store, shard, files, meta)
        sent = request_delta(self.store.requests(), before)  # not in the index: retries vary from run to run
        cpu_s, gpu_s = self.used()
        return {"shard": shard, "items": len(items), "files": rec["files"], "bytes": rec["bytes"], "cpu_s": cpu_s,
                "gpu_s": gpu_s, **{col: sent[kind] for col, kind in REQUEST_COLUMNS.items()}}

    def used(self) -> tuple[float, float]:
        """(CPU-seconds, GPU-seconds) this actor used since its last shard: its process's own CPU time (user +
        system, every thread; the first shard carries the process's start and the model load), and the
        seconds it held its share of a GPU (CUDA keeps no busy-time counter)."""
        import resource

        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu, now = ru.ru_utime + ru.ru_stime, time.monotonic()
        prev_cpu, prev_t = self._mark
        self._mark = (cpu, now)
        return round(cpu - prev_cpu, 3), round((now - prev_t) * self.cfg.gpu_share, 3)

    @property
    def mtime(self) -> int:
        """Every tar member's mtime: the run's logical time, so the tar's bytes depend only on the spec."""
        return int(self.cfg.created_at.timestamp())

    @staticmethod
    def members(owns: list[tuple[str, dict[str, bytes]]], rows: list[dict]) -> list[tuple[str, bytes]]:
        """The shard tar's members in item order: each item's own files by extension, then its JSON."""
        return [m for (key, own), row in zip(owns, rows) for m in sample_members(key, own, row)]

    def table(self, rows: list[dict], marks: dict[str, str]) -> bytes:
        schema = self.sampler.schema
        return parquet_bytes({n: [r[n] for r in rows] for n in schema.names}, schema, marks)

    def canonical(self, shard: str, files: dict[str, bytes], rows: list[dict], marks: dict[str, str],
                  owns: list[tuple[str, dict[str, bytes]]]) -> dict:
        """sha256 of each file whose bytes no rerun reproduces (a signed asset), as it is without what
        differs: the sampler's ``canonical(ext, data)``, and its ``canonical_row`` for the Parquet part
        (the tar: both, for its members)."""
        sampler, out = self.sampler, {}
        part, tar = part_path(shard), tar_path(shard)
        fix = getattr(sampler, "canonical_row", None)
        for rel, data in files.items():
            if rel == part:
                same = self.table([fix(r) for r in rows], marks) if fix is not None else data
            elif rel == tar:
                same = tar_bytes(self.members([(k, {e: sampler.canonical(e, d) for e, d in own.items()})
                                               for k, own in owns],
                                              [fix(r) for r in rows] if fix is not None else rows), self.mtime)
            else:
                same = sampler.canonical(rel.rsplit(".", 1)[-1], data)
            if same != data:
                out[rel] = sha256(same)
        return dict(sorted(out.items()))
