"""How a :class:`~pipeline.storage.store.Store` reaches its backend: fsspec options from the spec
(:func:`storage_options`), the filesystem (:func:`open_fs`), a backend error as one line
(:func:`_describe`) and the per-request counter an s3:// store attaches to its own client
session (:class:`RequestCounter`)."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from typing import Any

import fsspec

from pipeline.checks import uri_scheme
from pipeline.errors import StorageError
from pipeline.specs.schema import StorageSpec


def _describe(exc: BaseException, uri: str, endpoint: str | None) -> str:
    """Turn any backend exception into one line naming the URI."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    where = f" at {endpoint}" if endpoint else ""
    if any(k in low for k in ("could not connect", "connection refused", "cannot connect", "connect timeout",
                              "endpointconnectionerror", "name or service not known", "connectionerror",
                              "clientconnectorerror", "max retries exceeded", "server disconnected",
                              "connection reset", "connection aborted", "broken pipe", "connectionclosederror")):
        return f"{uri}: cannot reach the storage endpoint{where} ({type(exc).__name__})"
    boto = exc  # s3fs turns botocore's ClientError into an OSError whose __cause__ it is: the S3 error code
    while getattr(boto, "response", None) is None and boto.__cause__ is not None:
        boto = boto.__cause__
    response = getattr(boto, "response", None)
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable", "503") \
            or "reduce your request rate" in low:
        tries = re.search(r"reached max retries: (\d+)", str(boto))
        after = f" after {tries.group(1)} retries" if tries else ""
        return (f"{uri}: the storage endpoint{where} still throttled or timed out the request ({code or 'SlowDown'})"
                f"{after} (raise storage.max_retries or lower storage.max_concurrency)")
    if "nosuchbucket" in low or "bucket does not exist" in low or "specified bucket does not exist" in low:
        return f"{uri}: bucket does not exist"
    if isinstance(exc, PermissionError) and uri_scheme(uri) == "file":  # no credentials involved locally
        return f"{uri}: permission denied (not writable or readable by this user)"
    if isinstance(exc, PermissionError) or "accessdenied" in low or "access denied" in low or "forbidden" in low \
            or "invalidaccesskeyid" in low or "signaturedoesnotmatch" in low:
        return f"{uri}: access denied (check the credentials named in storage.credentials)"
    if isinstance(exc, FileNotFoundError):
        return f"{uri}: not found"
    if isinstance(exc, IsADirectoryError):
        return f"{uri}: is a directory"
    if isinstance(exc, OSError) and exc.errno == 28:
        return f"{uri}: no space left on device"
    if isinstance(exc, OSError) and exc.errno == 30:
        return f"{uri}: read-only file system"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{uri}: {type(exc).__name__}: {first[:300]}"


# --------------------------------------------------------------------------------------------- filesystems
def storage_options(scheme: str, spec: StorageSpec | None) -> dict[str, Any]:
    """fsspec options for a scheme: endpoint, region and credentials from the spec or the env."""
    spec = spec or StorageSpec()
    creds = spec.credentials
    if scheme == "s3":
        opts: dict[str, Any] = {}
        client: dict[str, Any] = {}
        endpoint = spec.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            client["endpoint_url"] = endpoint
        region = spec.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            client["region_name"] = region
        if client:
            opts["client_kwargs"] = client
        for key, env in (("key", creds.access_key_env), ("secret", creds.secret_key_env),
                         ("token", creds.session_token_env)):
            if env:
                if env not in os.environ:
                    raise StorageError(f"storage.credentials: environment variable {env} is not set")
                opts[key] = os.environ[env]
        if creds.profile:
            opts["profile"] = creds.profile
        # botocore retries throttling (SlowDown, 503), RequestTimeout, 5xx and connection errors with
        # exponential backoff and full jitter, storage.max_retries times (s3fs's own loop is off: open_fs);
        # a dead endpoint (connection refused) still fails in ~8 s with the default 4 retries.
        opts["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60,
                                 "retries": {"total_max_attempts": spec.max_retries + 1, "mode": spec.retry_mode}}
        opts["skip_instance_cache"] = True
        return opts
    if scheme in ("gs", "gcs"):
        opts = {}
        if creds.token_file_env:
            if creds.token_file_env not in os.environ:
                raise StorageError(f"storage.credentials: environment variable {creds.token_file_env} is not set")
            opts["token"] = os.environ[creds.token_file_env]
        if spec.endpoint:
            opts["endpoint_url"] = spec.endpoint
        return opts
    return {}


def _strip(uri: str) -> str:
    return uri.rstrip("/") if len(uri.rstrip("/")) > 0 else uri


def open_fs(uri: str, spec: StorageSpec | None = None,
            counter: RequestCounter | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``uri``; on s3://, ``counter`` (if given) counts every request it sends."""
    scheme = uri_scheme(uri)
    try:
        opts = storage_options(scheme, spec)
        if scheme == "s3" and counter is not None:
            import aiobotocore.session

            # Our own session, so that a hook sees every request of this filesystem's client: s3fs creates
            # its client from the session it is given (and then ignores `profile`: the session carries it).
            # Only for a Store's own filesystem, which is never pickled (Ray Train's is: no session there).
            session = aiobotocore.session.AioSession(profile=opts.pop("profile", None))
            counter.attach(session)
            opts["session"] = session
        fs, path = fsspec.core.url_to_fs(uri, **opts)
        if scheme == "s3":
            fs.retries = 1  # s3fs's own retry loop off: botocore's (storage.max_retries) is the one bound
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - every backend has its own
        raise StorageError(_describe(exc, uri, spec.endpoint if spec else None)) from None
    return fs, path.rstrip("/") if path not in ("/", "") else path


# --------------------------------------------------------------------------------------------- request counts
REQUEST_KINDS = ("PUT", "GET", "LIST", "HEAD", "DELETE", "OTHER")
# S3 operations by request class. PUT is every billed write request (S3 prices PUT, POST and COPY alike):
# a multipart upload is CreateMultipartUpload + one UploadPart per part + CompleteMultipartUpload.
_S3_KIND = {
    "PutObject": "PUT", "UploadPart": "PUT", "CreateMultipartUpload": "PUT", "CompleteMultipartUpload": "PUT",
    "CopyObject": "PUT", "UploadPartCopy": "PUT",
    "GetObject": "GET",
    "ListObjectsV2": "LIST", "ListObjects": "LIST", "ListBuckets": "LIST", "ListObjectVersions": "LIST",
    "ListMultipartUploads": "LIST", "ListParts": "LIST",
    "HeadObject": "HEAD", "HeadBucket": "HEAD",
    "DeleteObject": "DELETE", "DeleteObjects": "DELETE", "AbortMultipartUpload": "DELETE",
}


class RequestCounter:
    """Requests sent, by S3 operation name, and how many of them were retries.

    On s3:// it hangs on the botocore session of the store's client: ``before-send`` fires once per
    HTTP request (every retry too), ``before-call`` once per API call; retries = sends - calls.
    Elsewhere the store counts its own operations (:meth:`Store.requests` says which).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent: Counter[str] = Counter()
        self.calls = 0
        self.wire = False  # True once hung on a botocore session: the counts are the wire's

    def attach(self, session) -> None:
        session.register("before-send.s3", self._on_send)
        session.register("before-call.s3", self._on_call)
        self.wire = True

    def _on_send(self, event_name: str = "", **_) -> None:
        with self._lock:
            self.sent[event_name.rsplit(".", 1)[-1]] += 1

    def _on_call(self, **_) -> None:
        with self._lock:
            self.calls += 1

    def add(self, operation: str, n: int = 1) -> None:
        """Store-level counting, for backends without a hook (one logical request per call)."""
        if n:
            with self._lock:
                self.sent[operation] += n
                self.calls += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            sent, calls = dict(self.sent), self.calls
        out = dict.fromkeys(REQUEST_KINDS, 0)
        for op, n in sent.items():
            out[_S3_KIND.get(op, op if op in REQUEST_KINDS else "OTHER")] += n
        out["retries"] = max(0, sum(sent.values()) - calls)
        return out

    def operations(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(self.sent.items()))


def request_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """``after - before``, key by key (two :meth:`Store.requests` snapshots)."""
    return {k: v - before.get(k, 0) for k, v in after.items()}


def pyarrow_fs(fs: fsspec.AbstractFileSystem) -> Any:
    """An fsspec filesystem as a pyarrow one (what Ray Data and Ray Train take)."""
    import pyarrow.fs as pafs

    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    if "file" in protocols or "local" in protocols:
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))
