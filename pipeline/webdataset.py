"""WebDataset shards: one deterministic tar per shard, each item a ``<item id>.<ext>`` group of members.

``generate.formats: [webdataset]`` (docs/webdataset.md). Per item, in item order: its own files by
extension (the sampler's ``{"png": b"..."}``, sorted by extension), then ``<item id>.json``, its
Parquet row without the column that holds its file's bytes (JSON, sorted keys, UTF-8). Every header
is fixed: USTAR format, mtime the run's logical time, uid/gid 0, empty user and group names, mode
0o644, so the tar's bytes depend only on its members, that is on the spec.

    >>> data = tar_bytes([("a.json", b"{}")], mtime=0)
    >>> read_tar(data)
    ([('a.json', b'{}')], None)

Nothing here knows a family, imports torch or Ray, or touches storage.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import tarfile
from typing import Any

MEMBER_MODE = 0o644
FORMAT = tarfile.USTAR_FORMAT  # fixed: names are item ids (ASCII, short), so no PAX header is ever needed


def _plain(obj: Any) -> Any:
    """JSON's ``default``: timestamps as ISO 8601, numpy scalars as Python numbers."""
    if isinstance(obj, (dt.datetime, dt.date)):
        return obj.isoformat()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _holds_bytes(value: Any) -> bool:
    return isinstance(value, (bytes, bytearray, memoryview)) or \
        (isinstance(value, dict) and any(_holds_bytes(v) for v in value.values()))


def sample_json(row: dict[str, Any]) -> bytes:
    """An item's ``.json`` member: its row minus every column holding bytes (the image: it is the ``.png``)."""
    plain = {k: v for k, v in row.items() if not _holds_bytes(v)}
    return json.dumps(plain, sort_keys=True, ensure_ascii=False, default=_plain).encode("utf-8")


def sample_members(key: str, own: dict[str, bytes], row: dict[str, Any]) -> list[tuple[str, bytes]]:
    """One item's members: its own files by extension, then its JSON."""
    if "json" in own:
        raise ValueError(f"{key}: a sampler's own .json file would collide with the item's JSON member")
    return [(f"{key}.{ext}", own[ext]) for ext in sorted(own)] + [(f"{key}.json", sample_json(row))]


def tar_bytes(members: list[tuple[str, bytes]], mtime: int) -> bytes:
    """A tar of ``members`` in the order given, every header fixed but name and size."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=FORMAT, encoding="utf-8") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(mtime), MEMBER_MODE
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def member_records(members: list[tuple[str, bytes]]) -> dict[str, dict]:
    """Each member's size and sha256, by name (what a shard index records under ``members``)."""
    return {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in sorted(members)}


def read_tar(data: bytes) -> tuple[list[tuple[str, bytes]], str | None]:
    """Every member of a tar that could be read, in order, and why the rest could not (one line), or None:
    bytes that are no tar, a truncated member, a member that is not a plain file."""
    out: list[tuple[str, bytes]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for info in tar:
                if not info.isreg():
                    return out, f"member {info.name!r} is not a plain file"
                f = tar.extractfile(info)
                body = f.read() if f is not None else b""
                if len(body) != info.size:
                    return out, f"member {info.name!r} is truncated"
                out.append((info.name, body))
    except (tarfile.TarError, EOFError, OSError) as exc:
        why = " ".join(str(exc).split())[:100]
        return out, f"not a readable tar archive ({why})" if not out else f"unreadable after {len(out)} members ({why})"
    return out, None
