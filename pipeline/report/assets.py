"""A generated output's assets as the report shows them: one :class:`Asset` per item, read from the
shards' Parquet parts (or, for an output without Parquet, from the files themselves)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from pipeline.storage import Store


@dataclass
class Asset:
    """One generated asset: its own file (if it has one), and its provenance."""

    item_id: str
    data: bytes  # the item's own file (a PNG, ...); empty when it has none (a text completion)
    meta: dict[str, Any]
    ext: str = "png"


def _parquet_rows(store: Store, rel: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    if store.local:  # by path: reading from BytesIO can abort pyarrow at exit (docs/architecture.md)
        table = pq.read_table(store.path(rel), use_threads=False)
    else:
        table = pq.read_table(io.BytesIO(store.read(rel)), use_threads=False)
    return table.to_pylist()


def parquet_assets(store: Store, files: list[str], limit: int, file_column: str | None = None,
                   ext: str = "png") -> list[Asset]:
    """Assets from Parquet parts, by item id; ``file_column`` holds each item's file as a
    ``{bytes, path}`` struct (the Hugging Face layout), when items have one."""
    out: list[Asset] = []
    for rel in files:
        for row in sorted(_parquet_rows(store, rel), key=lambda r: r["item_id"]):
            own = (row.pop(file_column, None) or {}) if file_column else {}
            meta = {k: v for k, v in row.items() if v is not None}
            meta["DigitalSourceType"] = "trainedAlgorithmicMedia"  # every row of an aigc Parquet carries it
            out.append(Asset(str(row["item_id"]), own.get("bytes") or b"", meta, ext))
            if len(out) >= limit:
                return out
    return out


def parquet_parts(store: Store) -> list[str]:
    """The output's Parquet parts, in shard order."""
    return sorted(f for f in store.list("data") if f.endswith(".parquet"))
