"""Request-aware S3 writes against a real moto server on 127.0.0.1 (issue 17).

* request counts: what a Store sends, counted at the wire (a botocore hook), equals what a proxy in
  front of moto sees; N small files through ``write_many`` are N PUTs;
* throttling: a proxy answers the first PUTs with 503 SlowDown (or 400 RequestTimeout), as S3 does
  under load; botocore retries them with backoff within ``storage.max_retries`` and the write
  succeeds, or, retries spent, fails with one line naming the object;
* ``storage.max_concurrency`` bounds the PUTs in flight;
* multipart: an object over ``storage.multipart_threshold`` goes up in parts and reads back identical.

No boto or s3fs is mocked: every request crosses a real socket.
"""

from __future__ import annotations

import http.client
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydantic
import pytest

from pipeline.specs import StorageSpec
from pipeline.storage import REQUEST_KINDS, StorageError, Store, commit_shard, request_delta

from helpers import make_package

MiB = 2**20


@pytest.fixture(autouse=True)
def _no_metadata_lookups(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # all traffic stays on 127.0.0.1


def png_like(i: int, size: int = 1000) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + (i.to_bytes(4, "big") * size)[: size - 8]


class S3Proxy:
    """An HTTP proxy on 127.0.0.1 in front of moto that sees every request and can answer some itself.

    ``throttle(method, path, n)`` (n: how many requests with this method and path came before) returns
    ``(status, code)`` to answer with an S3 error document instead of forwarding, or None. ``delay``
    holds each PUT that long before forwarding, so that concurrent ones overlap and can be counted.
    """

    def __init__(self, target_port: int, throttle=None, delay: float = 0.0):
        self.target, self.throttle, self.delay = target_port, throttle, delay
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.in_flight = self.peak = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and Expect: 100-continue handled for us

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if not size:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return out
                        out += chunk
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                method, path = self.command, self.path
                with proxy.lock:
                    n = sum(1 for m, p, _ in proxy.log if (m, p) == (method, path))
                answer = proxy.throttle(method, path, n) if proxy.throttle else None
                if answer is not None:
                    status, code = answer
                    doc = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>Please '
                           f"reduce your request rate.</Message><Resource>{path}</Resource><RequestId>t</RequestId>"
                           "</Error>").encode()
                    with proxy.lock:
                        proxy.log.append((method, path, status))
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(doc)))
                    self.end_headers()
                    self.wfile.write(doc)
                    return
                if method == "PUT":
                    with proxy.lock:
                        proxy.in_flight += 1
                        proxy.peak = max(proxy.peak, proxy.in_flight)
                    time.sleep(proxy.delay)
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.target, timeout=60)
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("transfer-encoding", "content-length", "expect", "connection")}
                    headers["Content-Length"] = str(len(body))
                    conn.request(method, path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    conn.close()
                finally:
                    if method == "PUT":
                        with proxy.lock:
                            proxy.in_flight -= 1
                with proxy.lock:
                    proxy.log.append((method, path, resp.status))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", resp.getheader("Content-Length", str(len(data)))
                                 if method == "HEAD" else str(len(data)))
                self.end_headers()
                if method != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def count(self, method: str, prefix: str = "") -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.log if m == method and p.split("?")[0].startswith(prefix))


@pytest.fixture()
def proxy_for(s3_env):
    made = []

    def make(**kw) -> S3Proxy:
        made.append(S3Proxy(s3_env.port, **kw))
        return made[-1]

    yield make
    for p in made:
        p.close()


def via(spec: StorageSpec, proxy: S3Proxy, **update) -> StorageSpec:
    return StorageSpec(**{**spec.model_dump(exclude={"secret_key"}), "endpoint": proxy.endpoint, **update})


def bucket_of(spec: StorageSpec) -> str:
    return spec.root.removeprefix("s3://").split("/")[0]


# --------------------------------------------------------------------------------------------- counts
def test_write_many_small_files_is_one_put_each(s3_storage, proxy_for):
    proxy = proxy_for()
    spec = via(s3_storage, proxy)
    store = Store(spec.root, spec)
    assert store.requests() == {**dict.fromkeys(REQUEST_KINDS, 0), "retries": 0}
    files = {f"png/{i:05d}.png": png_like(i) for i in range(120)}
    store.write_many(files)
    sent = store.requests()
    assert sent["PUT"] == len(files) and sent["retries"] == 0
    assert sum(sent.values()) == len(files)  # nothing else: no HEAD, no LIST before the PUTs
    assert store.operations() == {"PutObject": len(files)}
    assert proxy.count("PUT") == len(files)  # the wire agrees with the hook
    # and the objects are there, read back through the same store
    before = store.requests()
    assert store.read("png/00042.png") == files["png/00042.png"]
    assert sorted(store.list("png")) == sorted(files)
    delta = request_delta(store.requests(), before)
    assert delta["GET"] == 1 and delta["LIST"] >= 1 and delta["PUT"] == 0
    assert delta["GET"] + delta["LIST"] + delta["HEAD"] == proxy.count("GET") + proxy.count("HEAD")


def test_commit_shard_requests(s3_storage):
    store = Store(s3_storage.root, s3_storage)
    files = {f"png/{i:05d}.png": png_like(i) for i in range(30)}
    commit_shard(store, "00000", files, {"items": 30})
    assert store.requests()["PUT"] == 31  # the files, then the index


def test_local_and_memory_counts(tmp_path):
    local = Store(str(tmp_path / "out"))
    local.write_many({"a.bin": b"1", "b.bin": b"2"})
    assert sum(local.requests().values()) == 0  # a disk takes no requests
    mem = Store("memory://counts-test")
    mem.write_many({"a.bin": b"1", "b.bin": b"2"})
    mem.read("a.bin")
    assert mem.requests()["PUT"] == 2 and mem.requests()["GET"] == 1  # counted per store operation


# --------------------------------------------------------------------------------------------- throttling
@pytest.mark.parametrize("status,code,mode", [(503, "SlowDown", "standard"), (400, "RequestTimeout", "standard"),
                                              (503, "SlowDown", "adaptive")])
def test_throttled_puts_are_retried_and_succeed(s3_storage, proxy_for, status, code, mode):
    k = 3
    answered = []

    def throttle(method, path, n):
        if method == "PUT" and len(answered) < k:
            answered.append(path)
            return status, code
        return None

    proxy = proxy_for(throttle=throttle)
    spec = via(s3_storage, proxy, max_retries=3, retry_mode=mode)
    store = Store(spec.root, spec)
    files = {f"png/{i:05d}.png": png_like(i) for i in range(20)}
    t0 = time.monotonic()
    store.write_many(files)
    assert time.monotonic() - t0 < 30
    sent = store.requests()
    assert len(answered) == k
    assert sent["retries"] == k and sent["PUT"] == len(files) + k  # every attempt counted, the retries too
    assert proxy.count("PUT") == len(files) + k
    for rel, data in files.items():
        assert store.read(rel) == data
    # a single write too
    answered.clear()
    store.write("one.json", b"{}")
    assert store.read("one.json") == b"{}" and store.requests()["retries"] == 2 * k


def test_throttling_past_max_retries_is_one_line_naming_the_object(s3_storage, proxy_for):
    doomed = "png/00007.png"

    def throttle(method, path, n):
        return (503, "SlowDown") if method == "PUT" and path.split("?")[0].endswith(doomed) else None

    proxy = proxy_for(throttle=throttle)
    spec = via(s3_storage, proxy, max_retries=2)
    store = Store(spec.root, spec)
    files = {f"png/{i:05d}.png": png_like(i) for i in range(12)}
    with pytest.raises(StorageError) as err:
        store.write_many(files)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{spec.root}/{doomed}: "), msg
    assert "SlowDown" in msg and "after 2 retries" in msg and "storage.max_retries" in msg, msg
    assert proxy.count("PUT", f"/{bucket_of(spec)}/run/{doomed}") == 3  # the first try and max_retries=2 retries
    with pytest.raises(StorageError) as err:
        store.write(doomed, b"x")
    assert str(err.value).startswith(f"{spec.root}/{doomed}: ") and "\n" not in str(err.value)
    # no retries at all with max_retries: 0
    spec0 = via(s3_storage, proxy, max_retries=0)
    before = proxy.count("PUT")
    with pytest.raises(StorageError):
        Store(spec0.root, spec0).write(doomed, b"x")
    assert proxy.count("PUT") - before == 1


def test_max_concurrency_bounds_puts_in_flight(s3_storage, proxy_for):
    proxy = proxy_for(delay=0.05)
    spec = via(s3_storage, proxy, max_concurrency=4)
    Store(spec.root, spec).write_many({f"png/{i:05d}.png": png_like(i) for i in range(40)})
    assert 2 <= proxy.peak <= 4, proxy.peak


# --------------------------------------------------------------------------------------------- multipart
def test_large_object_goes_up_in_parts(s3_storage, proxy_for):
    proxy = proxy_for()
    spec = via(s3_storage, proxy, multipart_threshold=10 * MiB, multipart_part_size=5 * MiB)
    store = Store(spec.root, spec)
    big = os.urandom(12 * MiB + 12345)  # parts of 5, 5 and 2 MiB
    small = os.urandom(10 * MiB - 1)  # one byte under the threshold: one PUT
    store.write("images/s000000.tar", big)
    assert store.operations() == {"CreateMultipartUpload": 1, "UploadPart": 3, "CompleteMultipartUpload": 1}
    assert store.requests()["PUT"] == 5  # each a billed write request
    store.write_many({"images/s000001.tar": small, "images/s000002.tar": big, "x.json": b"{}"})
    ops = store.operations()
    assert ops["PutObject"] == 2 and ops["UploadPart"] == 6 and ops["CreateMultipartUpload"] == 2
    assert store.read("images/s000000.tar") == big
    assert store.read("images/s000002.tar") == big
    assert store.read("images/s000001.tar") == small
    assert store.entry("images/s000000.tar") == {"size": len(big), "regular": True}


def test_multipart_spec_bounds():
    StorageSpec(multipart_threshold=10 * MiB, multipart_part_size=5 * MiB)
    for bad in ({"multipart_threshold": 5 * MiB}, {"multipart_part_size": 4 * MiB},
                {"multipart_threshold": 10 * MiB, "multipart_part_size": 6 * MiB}, {"max_retries": -1},
                {"retry_mode": "legacy"}):
        with pytest.raises(pydantic.ValidationError):
            StorageSpec(**bad)


# --------------------------------------------------------------------------------------------- the actor
def test_shard_worker_returns_its_shards_requests(s3_storage, tmp_path):
    from pipeline.generate.actor import REQUEST_KEYS, ShardConfig, ShardWorker
    from pipeline.generate.plan import ShardPlan
    from pipeline.package import load_package

    package = make_package(tmp_path / "model")
    for formats, puts in ((["png", "parquet"], 10 + 1 + 1), (["webdataset", "parquet"], 1 + 1 + 1)):
        out = f"{s3_storage.root}/{formats[0]}"
        cfg = ShardConfig(model_uri=package, model_sha256=load_package(package).model_sha256, output=out,
                          storage=s3_storage, job="r", job_seed=0, date="2026-01-01", formats=formats,
                          batch_size=4, threads=1)
        worker = ShardWorker(cfg)
        summary = worker.run_shard(ShardPlan("s000000", start=0, count=10).row())
        assert {k: summary[k] for k in REQUEST_KEYS} == {**dict.fromkeys(REQUEST_KEYS, 0), "requests_put": puts}
        rows = worker({k: [v] for k, v in ShardPlan("s000001", start=10, count=10).row().items()})
        assert rows["requests_put"] == [puts] and set(REQUEST_KEYS) <= set(rows)
