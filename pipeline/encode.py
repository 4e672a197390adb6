"""What every asset kind shares: the Parquet writer of a shard's table, the run's logical time,
and the IPTC code every generated asset carries.

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


def logical_time(date: str) -> dt.datetime:
    """A run's logical timestamp: midnight UTC of its date, so reruns write the same bytes."""
    return dt.datetime.fromisoformat(date).replace(tzinfo=dt.timezone.utc)


def parquet_bytes(rows: dict[str, list], schema: pa.Schema) -> bytes:
    """One Parquet file (a single row group) from column lists; deterministic for equal input."""
    table = pa.Table.from_pydict(rows, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", row_group_size=max(1, table.num_rows), write_statistics=True)
    return buf.getvalue()
