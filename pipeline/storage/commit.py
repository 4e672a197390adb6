"""Commits and publishing: the exactly-once protocol of every output.

* :func:`commit_shard`: a shard's files first, then its index ``_shards/<id>.json`` (per-file size
  and sha256). A shard is committed exactly when its index exists;
* :func:`publish`: top-level files, then ``manifest.json``, then ``_SUCCESS``: the publish point.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass

from pipeline.errors import NotFound
from pipeline.layout import SHARDS_DIR, shard_index_path
from pipeline.storage.store import Store, json_bytes, sha256  # noqa: F401 - re-exported

MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"
MANIFEST_FORMAT = "aigc-manifest/1"


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("aigc-pipeline", "ray", "torch", "pyarrow", "numpy", "pillow", "fsspec"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


@dataclass
class FileRecord:
    size: int
    sha256: str

    def to_json(self) -> dict:
        return {"size": self.size, "sha256": self.sha256}


def records(files: dict[str, bytes]) -> dict[str, dict]:
    return {k: FileRecord(len(v), sha256(v)).to_json() for k, v in sorted(files.items())}


def commit_shard(store: Store, shard_id: str, files: dict[str, bytes], meta: dict | None = None) -> dict:
    """Write a shard's files, then its index. The index is the commit point.

    The index holds only deterministic content (names, sizes, sha256, item counts) so that a
    rerun or a racing run of the same spec writes the very same bytes.
    """
    store.write_many(files)
    index = {"shard": shard_id, "files": records(files), **(meta or {})}
    data = store.write_json(shard_index_path(shard_id), index)
    return {"shard": shard_id, "index_sha256": sha256(data), "files": len(files),
            "bytes": sum(len(v) for v in files.values()), **(meta or {})}


def committed_shards(store: Store) -> dict[str, dict]:
    """Indexes of every committed shard, keyed by shard id."""
    out = {}
    for rel in store.list(SHARDS_DIR):
        if not rel.endswith(".json") or ".tmp-" in rel:
            continue
        try:
            data = store.read(rel)
            index = json.loads(data)
        except (NotFound, ValueError):
            # Listed but unreadable or torn: a PUT the store had not finished when the writer died.
            # It is not a commit; the shard is redone.
            continue
        out[index["shard"]] = {"index": index, "index_sha256": sha256(data)}
    return out


def is_published(store: Store) -> bool:
    return store.exists(SUCCESS) and store.exists(MANIFEST)


def publish(store: Store, *, kind: str, job: str, spec: dict | None, counts: dict,
            shards: dict[str, dict] | None = None, files: dict[str, bytes] | None = None,
            extra: dict | None = None) -> dict:
    """Write top-level ``files``, then ``manifest.json``, then ``_SUCCESS``: the publish point.

    ``shards`` maps shard id → {"index_sha256", "items", "files", "bytes"} from :func:`commit_shard`.
    """
    import datetime as dt

    files = files or {}
    store.write_many(files)
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": kind,
        "job": job,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "spec": spec,
        "counts": counts,
        "versions": package_versions(),
        "files": records(files),
        "shards": {
            sid: {"index": shard_index_path(sid), **{k: v for k, v in rec.items() if k != "shard"}}
            for sid, rec in sorted((shards or {}).items())
        },
        **(extra or {}),
    }
    store.write_json(MANIFEST, manifest)
    store.write(SUCCESS, b"")
    return manifest


