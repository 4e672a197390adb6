"""What every asset kind shares: the Parquet writer of a shard's table (with the key-value metadata
that marks it AI-generated), the run's logical time, and the IPTC code every generated asset carries.

    >>> parquet_bytes({"x": [1, 2]}, pa.schema([("x", pa.int64())]))[:4]
    b'PAR1'
"""

from __future__ import annotations

import datetime as dt
import io

import pyarrow as pa
import pyarrow.parquet as pq

import pipeline

IPTC_TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
SOFTWARE = f"aigc-pipeline {pipeline.__version__}"

# The columns every per-item asset table (PNG, WAV) shares, in order: what the item is, then its file as
# the Hugging Face `datasets` {bytes, path} layout and that file's own columns, then its provenance.
# :func:`asset_columns` puts them together; the order is the file's, so keep it.
MEDIA_FILE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
ITEM_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("item_id", pa.string()),
    ("seed", pa.int64()),
    ("prompt", pa.string()),
    ("label", pa.int32()),  # the item's class: its seed's label, or the prompt's intended label
    ("resolved_label", pa.int32()),  # text generators: the class the prompt resolved to
    ("resolved_p", pa.float32()),  # ... and the text encoder's probability of it
    ("text_encoder", pa.string()),  # ... and the encoder's version
]
PROVENANCE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("model_sha256", pa.string()),
    ("job", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
]


def asset_columns(media: str, file_columns: list[tuple[str, pa.DataType]]) -> list[tuple[str, pa.DataType]]:
    """An asset table's columns: the item's, ``media`` (the file), ``file_columns``, the provenance's."""
    return [*ITEM_COLUMNS, (media, MEDIA_FILE), *file_columns, *PROVENANCE_COLUMNS]


def logical_time(date: str) -> dt.datetime:
    """A run's logical timestamp: midnight UTC of its date, so reruns write the same bytes."""
    return dt.datetime.fromisoformat(date).replace(tzinfo=dt.timezone.utc)


def ai_metadata(*, job: str, date: str, model_sha256: str, job_seed: int, shard: str, items: int,
                first_item: str | None, last_item: str | None) -> dict[str, str]:
    """The Parquet key-value metadata that marks a shard's table as AI-generated (any family).

    Keys are ``aigc.*`` strings; every value derives from the spec and the model, so the part's bytes
    stay deterministic. Item seeds derive from ``aigc.job_seed`` and each item's index (or prompt line),
    so the first and last item ids name the table's seed range.
    """
    return {
        "aigc.ai_generated": "true",
        "aigc.digital_source_type": IPTC_TRAINED_ALGORITHMIC_MEDIA,
        "aigc.software": SOFTWARE,
        "aigc.model_sha256": model_sha256,
        "aigc.job": job,
        "aigc.date": date,
        "aigc.job_seed": str(job_seed),
        "aigc.shard": shard,
        "aigc.items": str(items),
        "aigc.item_range": f"{first_item}..{last_item}" if first_item is not None else "",
    }


def parquet_bytes(rows: dict[str, list], schema: pa.Schema, metadata: dict[str, str] | None = None) -> bytes:
    """One Parquet file (a single row group) from column lists, with ``metadata`` added to the schema's
    key-value metadata; deterministic for equal input."""
    if metadata:
        schema = schema.with_metadata({**(schema.metadata or {}), **{k.encode(): v.encode() for k, v in
                                                                       metadata.items()}})
    table = pa.Table.from_pydict(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=max(1, table.num_rows), write_statistics=True)
    return buf.getvalue()
