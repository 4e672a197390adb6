"""Storage: the store (:mod:`~pipeline.storage.store`), the commit protocol
(:mod:`~pipeline.storage.commit`), verification (:mod:`~pipeline.storage.verify`) and what workers
need to reach it (:mod:`~pipeline.storage.env`)."""

from pipeline.errors import NotFound, StorageError
from pipeline.layout import SHARDS_DIR, shard_index_path
from pipeline.storage.commit import (
                                     MANIFEST,
                                     MANIFEST_FORMAT,
                                     SUCCESS,
                                     FileRecord,
                                     commit_shard,
                                     committed_shards,
                                     is_published,
                                     json_bytes,
                                     package_versions,
                                     publish,
                                     records,
                                     sha256,
)
from pipeline.storage.env import WorkerEnv, absolute_uri, resolve_recorded, worker_env
from pipeline.storage.store import (
                                    LOCK,
                                    REQUEST_KINDS,
                                    Store,
                                    join,
                                    open_fs,
                                    pyarrow_fs,
                                    request_delta,
                                    safe_relpath,
                                    storage_options,
)
from pipeline.storage.verify import VerifyReport, verify

__all__ = [
    "LOCK", "MANIFEST", "MANIFEST_FORMAT", "REQUEST_KINDS", "SHARDS_DIR", "SUCCESS", "FileRecord", "NotFound",
    "StorageError", "Store", "VerifyReport", "WorkerEnv", "absolute_uri", "commit_shard", "committed_shards",
    "is_published", "join", "json_bytes", "open_fs", "package_versions", "pyarrow_fs", "publish", "records",
    "request_delta", "resolve_recorded", "safe_relpath", "sha256", "shard_index_path", "storage_options", "verify",
    "worker_env",
]
