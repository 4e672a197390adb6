"""The generation actor: loads a model package once, then turns shard rows into committed shards.

Ray Data runs :class:`ShardWorker` on an ``ActorPoolStrategy`` pool, one shard per call. The
actor knows no family: the package's family gives it a **sampler**, an object with

* ``schema``: the ``pyarrow.Schema`` of a shard's Parquet table;
* ``seed_classes``: the number of classes seed items cycle through as labels (``i % classes``),
  or None for a model without them;
* ``__call__(items, path_of) -> list[(files, row)]``: one micro-batch of
  :class:`~pipeline.generate.plan.Item` → per item, its own files by extension (``{"png": b"..."}``,
  or none) and its Parquet row; ``path_of(item_id, ext)`` names where an item's file goes;
* optionally ``counts(rows) -> dict``: figures summed over the shards into the manifest.

Items run in fixed micro-batches of ``generate.scaling.batch_size`` in item order, and each item
draws from its own seeded generator, so the bytes of an item never depend on actor count,
scheduling or retries. The shard's files and Parquet part go straight to storage, then the shard
index commits it; only small summaries travel back through the object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.catalog.registry import implementation
from pipeline.encode import logical_time, parquet_bytes
from pipeline.errors import PackageError
from pipeline.generate.plan import shard_items
from pipeline.layout import asset_path, part_path
from pipeline.package import load_package
from pipeline.specs.schema import StorageSpec
from pipeline.storage import Store, WorkerEnv, commit_shard


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

        cfg.env.apply()
        torch.set_num_threads(cfg.threads)  # actors share the node: one pool, not N x all cores
        self.cfg = cfg
        pkg = load_package(cfg.model_uri, cfg.storage)
        if pkg.model_sha256 != cfg.model_sha256:  # the package changed under a running job
            raise PackageError(f"{cfg.model_uri}: model changed during the run (sha256 {pkg.model_sha256[:12]}…)")
        self.sampler = implementation(pkg.config).sampler(pkg, cfg)
        self.store = Store(cfg.output, cfg.storage)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"shard": [], "items": [], "files": [], "bytes": []}
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
        for lo in range(0, len(items), cfg.batch_size):
            chunk = items[lo: lo + cfg.batch_size]
            for item, (own, table_row) in zip(chunk,
                                              sampler(chunk, lambda item_id, ext: asset_path(shard, item_id, ext))):
                for ext, data in own.items():
                    if ext in cfg.formats:
                        files[asset_path(shard, item.item_id, ext)] = data
                rows.append(table_row)
        if "parquet" in cfg.formats:
            files[part_path(shard)] = parquet_bytes({n: [r[n] for r in rows] for n in sampler.schema.names},
                                                    sampler.schema)
        meta: dict[str, Any] = {"items": len(items)}
        counts = getattr(sampler, "counts", None)
        if counts is not None:
            meta["counts"] = counts(rows)
        rec = commit_shard(self.store, shard, files, meta)
        return {"shard": shard, "items": len(items), "files": rec["files"], "bytes": rec["bytes"]}
