"""Storage on a local path, memory:// and a real S3 API server (moto on 127.0.0.1).

Round trip, shard commit, publish and verify on each backend; a flipped byte, a deleted and an
extra object are each named; the S3 failure modes (dead endpoint, missing bucket, denied access,
a server that dies mid-write) each end as one clear line and never as a published output.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

import boto3
import fsspec
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.specs import Credentials, StorageSpec
from pipeline.storage import (
    MANIFEST,
    SUCCESS,
    StorageError,
    Store,
    commit_shard,
    committed_shards,
    is_published,
    publish,
    safe_relpath,
    verify,
)

from conftest import MotoServer
from helpers import S3_KEY, S3_SECRET, CutProxy, free_port

CREDS = Credentials(access_key_env="AWS_ACCESS_KEY_ID", secret_key_env="AWS_SECRET_ACCESS_KEY")


@pytest.fixture(autouse=True)
def _no_metadata_lookups(monkeypatch):
    # botocore must never wander off to the EC2 metadata address: all traffic stays on 127.0.0.1.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


# --------------------------------------------------------------------------------------------- helpers
def png_like(i: int, size: int = 1000) -> bytes:
    """~1 KB of deterministic bytes with a PNG signature."""
    body = hashlib.sha256(str(i).encode()).digest() * (size // 32 + 1)
    return b"\x89PNG\r\n\x1a\n" + body[: size - 8]


def shard_files(shard: int, n: int = 5) -> dict[str, bytes]:
    files = {f"png/{shard:05d}/{shard * n + i:06d}.png": png_like(shard * n + i) for i in range(n)}
    files[f"parquet/part-{shard:05d}.parquet"] = b"PAR1" + bytes(range(256)) * 3 + b"PAR1"
    return files


def publish_output(store: Store, shards: int = 2) -> dict[str, bytes]:
    """Commit ``shards`` shards and publish; returns every data file written."""
    written: dict[str, bytes] = {}
    recs = {}
    for s in range(shards):
        files = shard_files(s)
        written.update(files)
        recs[f"{s:05d}"] = commit_shard(store, f"{s:05d}", files, {"items": 5})
    top = {"report/summary.json": b'{"ok": true}'}
    written.update(top)
    publish(store, kind="generate", job="t", spec={"name": "t"}, counts={"items": 5 * shards},
            shards=recs, files=top)
    return written


def s3_client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET)


class Raw:
    """Touch a backend behind the Store's back, the way a user or a broken disk would."""

    def __init__(self, spec: StorageSpec):
        self.spec = spec

    def _s3(self):
        bucket, _, prefix = self.spec.root.removeprefix("s3://").partition("/")
        return s3_client(self.spec.endpoint), bucket, prefix

    def put(self, rel: str, data: bytes) -> None:
        root = self.spec.root
        if root.startswith("s3://"):
            client, bucket, prefix = self._s3()
            client.put_object(Bucket=bucket, Key=f"{prefix}/{rel}", Body=data)
        elif root.startswith("memory://"):
            fsspec.filesystem("memory").pipe_file(f"{root.removeprefix('memory://')}/{rel}", data)
        else:
            Path(root, rel).parent.mkdir(parents=True, exist_ok=True)
            Path(root, rel).write_bytes(data)

    def get(self, rel: str) -> bytes:
        root = self.spec.root
        if root.startswith("s3://"):
            client, bucket, prefix = self._s3()
            return client.get_object(Bucket=bucket, Key=f"{prefix}/{rel}")["Body"].read()
        if root.startswith("memory://"):
            return fsspec.filesystem("memory").cat_file(f"{root.removeprefix('memory://')}/{rel}")
        return Path(root, rel).read_bytes()

    def delete(self, rel: str) -> None:
        root = self.spec.root
        if root.startswith("s3://"):
            client, bucket, prefix = self._s3()
            client.delete_object(Bucket=bucket, Key=f"{prefix}/{rel}")
        elif root.startswith("memory://"):
            fsspec.filesystem("memory").rm_file(f"{root.removeprefix('memory://')}/{rel}")
        else:
            Path(root, rel).unlink()

    def flip(self, rel: str, at: int = 100) -> None:
        data = bytearray(self.get(rel))
        data[at] ^= 0x01
        self.put(rel, bytes(data))


@pytest.fixture(params=["local", "memory", "s3"])
def spec(request, tmp_path) -> StorageSpec:
    if request.param == "local":
        return StorageSpec(root=str(tmp_path / "out"))
    if request.param == "memory":
        return StorageSpec(root=f"memory://aigc-test-{uuid.uuid4().hex}/out")
    return request.getfixturevalue("s3_storage")


# --------------------------------------------------------------------------------------------- round trip
def test_round_trip(spec):
    store = Store(spec.root, spec)
    assert store.list() == [] and not store.exists("a/b.bin")
    store.write("a/b.bin", b"\x00\x01binary")
    assert store.read("a/b.bin") == b"\x00\x01binary" and store.exists("a/b.bin")
    store.write("a/b.bin", b"replaced")
    assert store.read("a/b.bin") == b"replaced"
    store.write_json("meta/info.json", {"x": [1, 2], "é": "ü"})
    assert store.read_json("meta/info.json") == {"x": [1, 2], "é": "ü"}
    many = {f"many/{i:03d}.png": png_like(i) for i in range(40)}
    store.write_many(many)
    assert store.list("many") == sorted(many)
    assert all(store.read(k) == v for k, v in many.items())
    assert store.list() == sorted(["a/b.bin", "meta/info.json", *many])
    store.delete(["a/b.bin"])
    assert not store.exists("a/b.bin")
    with pytest.raises(StorageError) as err:
        store.read("a/b.bin")
    assert "a/b.bin" in str(err.value) and "\n" not in str(err.value)


def test_commit_publish_verify_clean(spec):
    store = Store(spec.root, spec)
    assert not is_published(store)
    written = publish_output(store)
    assert is_published(store)
    assert sorted(committed_shards(store)) == ["00000", "00001"]
    manifest = store.read_json(MANIFEST)
    assert manifest["counts"] == {"items": 10} and manifest["spec"] == {"name": "t"}
    assert manifest["files"]["report/summary.json"]["sha256"] == hashlib.sha256(b'{"ok": true}').hexdigest()
    assert "python" in manifest["versions"]
    assert store.read(SUCCESS) == b""

    report = verify(spec.root, spec)
    assert report.ok, report.lines()
    assert report.files_checked == len(written)
    assert report.bytes_checked == sum(len(v) for v in written.values())
    assert report.lines() == []


def test_shard_commit_is_deterministic(spec):
    """A rerun of the same shard writes the very same index bytes (same commit)."""
    store = Store(spec.root, spec)
    first = commit_shard(store, "00000", shard_files(0), {"items": 5})
    index = store.read("_shards/00000.json")
    second = commit_shard(store, "00000", shard_files(0), {"items": 5})
    assert first == second and store.read("_shards/00000.json") == index


def test_flipped_byte_is_named_corrupt(spec):
    store = Store(spec.root, spec)
    publish_output(store)
    victim = "png/00001/000007.png"
    Raw(spec).flip(victim)
    report = verify(spec.root, spec)
    assert not report.ok
    assert report.corrupt == [victim] and report.missing == [] and report.extra == []
    assert f"corrupt: {store.uri}/{victim}" in report.lines()


def test_same_size_rewrite_of_top_level_file_is_corrupt(spec):
    store = Store(spec.root, spec)
    publish_output(store)
    Raw(spec).put("report/summary.json", b'{"ok": fals}')  # same length, other bytes
    assert verify(spec.root, spec).corrupt == ["report/summary.json"]


def test_deleted_object_is_named_missing(spec):
    store = Store(spec.root, spec)
    publish_output(store)
    victim = "parquet/part-00000.parquet"
    Raw(spec).delete(victim)
    report = verify(spec.root, spec)
    assert not report.ok
    assert report.missing == [victim] and report.corrupt == [] and report.extra == []


def test_extra_file_is_named(spec):
    store = Store(spec.root, spec)
    publish_output(store)
    Raw(spec).put("png/00000/stray.png", b"not from this run")
    report = verify(spec.root, spec)
    assert not report.ok
    assert report.extra == ["png/00000/stray.png"] and report.corrupt == [] and report.missing == []


def test_deleted_shard_index_and_missing_success(spec):
    store = Store(spec.root, spec)
    publish_output(store)
    Raw(spec).delete("_shards/00001.json")
    Raw(spec).delete(SUCCESS)
    report = verify(spec.root, spec)
    assert not report.ok
    assert "_shards/00001.json" in report.missing
    assert any("_SUCCESS" in p for p in report.problems)


def test_flipped_shard_index_is_corrupt_not_extra(tmp_path):
    spec = StorageSpec(root=str(tmp_path / "out"))
    publish_output(Store(spec.root, spec))
    index = Raw(spec).get("_shards/00000.json")
    Raw(spec).flip("_shards/00000.json", at=index.index(b'"sha256": "') + 15)  # inside a checksum
    report = verify(spec.root, spec)
    assert report.corrupt == ["_shards/00000.json"]
    assert report.extra == []


@pytest.mark.parametrize("manifest", [b"{not json", b'{"format": "other"}', b"[]",
                                      b'{"format": "aigc-manifest/1", "files": [1], "shards": {"x": {}}}'])
def test_broken_manifest_is_a_finding(tmp_path, manifest):
    spec = StorageSpec(root=str(tmp_path / "out"))
    publish_output(Store(spec.root, spec))
    Raw(spec).put(MANIFEST, manifest)
    try:
        report = verify(spec.root, spec)
    except StorageError as exc:  # unreadable JSON: one line naming the manifest
        assert "manifest.json" in str(exc) and "\n" not in str(exc)
        return
    assert not report.ok and report.problems and report.problems[0].startswith("manifest.json")


def test_verify_unpublished_output(spec):
    store = Store(spec.root, spec)
    commit_shard(store, "00000", shard_files(0))
    report = verify(spec.root, spec)
    assert not report.ok and "no manifest.json" in report.problems[0]


# --------------------------------------------------------------------------------------------- CLI verify
def test_cli_verify_s3_names_flipped_object(s3_storage):
    """Acceptance: `aigc verify` on an S3 prefix names the object whose byte was flipped."""
    publish_output(Store(s3_storage.root, s3_storage))
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", s3_storage.root, "--endpoint", s3_storage.endpoint])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("OK: 13 files")

    victim = "png/00000/000003.png"
    Raw(s3_storage).flip(victim, at=500)
    bad = runner.invoke(app, ["verify", s3_storage.root, "--endpoint", s3_storage.endpoint])
    assert bad.exit_code == 1, bad.output
    assert "Traceback" not in bad.output
    named = [ln for ln in bad.output.splitlines() if ln.startswith("corrupt:")]
    assert named == [f"corrupt: {s3_storage.root}/{victim}"]
    assert "FAILED" in bad.output


def test_cli_verify_json_local(tmp_path):
    spec = StorageSpec(root=str(tmp_path / "out"))
    publish_output(Store(spec.root, spec))
    Raw(spec).delete("png/00000/000000.png")
    result = CliRunner().invoke(app, ["verify", spec.root, "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["missing"] == ["png/00000/000000.png"]


# --------------------------------------------------------------------------------------------- S3 specifics
def test_write_many_small_objects_all_land(s3_storage):
    store = Store(s3_storage.root, s3_storage)
    files = {f"img/{i:04d}.png": png_like(i) for i in range(200)}
    store.write_many(files)
    client, bucket, prefix = Raw(s3_storage)._s3()
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/img/"):
        for obj in page.get("Contents", []):
            found[obj["Key"].removeprefix(prefix + "/")] = obj["Size"]
    assert found == {k: len(v) for k, v in files.items()}
    for k in ("img/0000.png", "img/0123.png", "img/0199.png"):
        assert Raw(s3_storage).get(k) == files[k]


def test_unreachable_endpoint(s3_env):
    spec = StorageSpec(root="s3://bucket/run", endpoint=f"http://127.0.0.1:{free_port()}", credentials=CREDS)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as err:
        Store(spec.root, spec).write("x.bin", b"1")
    msg = str(err.value)
    assert "cannot reach" in msg and spec.endpoint in msg and "\n" not in msg
    assert time.monotonic() - t0 < 60  # fails fast, no minutes of retries
    result = CliRunner().invoke(app, ["verify", spec.root, "--endpoint", spec.endpoint])
    assert result.exit_code == 1 and "cannot reach" in result.output and "Traceback" not in result.output


def test_missing_bucket(s3_env):
    spec = StorageSpec(root=f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/run", endpoint=s3_env.endpoint,
                       credentials=CREDS)
    store = Store(spec.root, spec)
    for op in (lambda: store.write("x.bin", b"1"), lambda: store.write_many({"a": b"1", "b": b"2"}),
               lambda: store.list(), lambda: verify(spec.root, spec)):
        with pytest.raises(StorageError) as err:
            op()
        assert str(err.value) == f"{spec.root}: bucket does not exist" or \
            str(err.value).endswith(": bucket does not exist"), str(err.value)
    result = CliRunner().invoke(app, ["verify", spec.root, "--endpoint", spec.endpoint])
    assert result.exit_code == 1 and "bucket does not exist" in result.output


@pytest.fixture(scope="module")
def auth_moto():
    """A second moto server that checks credentials (IAM auth on after its first request)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INITIAL_NO_AUTH_ACTION_COUNT", "1")
        server = MotoServer()
        server.start()
    try:
        yield server
    finally:
        server.stop()


def test_denied_access(auth_moto, monkeypatch):
    bucket = auth_moto.bucket()  # the one request moto lets through without auth
    monkeypatch.setenv("AIGC_TEST_KEY", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AIGC_TEST_SECRET", "wrong-secret")
    spec = StorageSpec(root=f"s3://{bucket}/run", endpoint=auth_moto.endpoint, region="us-east-1",
                       credentials=Credentials(access_key_env="AIGC_TEST_KEY", secret_key_env="AIGC_TEST_SECRET"))
    store = Store(spec.root, spec)
    for op in (lambda: store.write("x.bin", b"1"), lambda: store.write_many({f"{i}": b"1" for i in range(10)}),
               lambda: store.read("x.bin"), lambda: verify(spec.root, spec)):
        with pytest.raises(StorageError) as err:
            op()
        assert "access denied" in str(err.value) and "\n" not in str(err.value)
        assert "wrong-secret" not in str(err.value)


def test_credentials_env_var_not_set(s3_env):
    spec = StorageSpec(root="s3://b/run", endpoint=s3_env.endpoint,
                       credentials=Credentials(access_key_env="AIGC_TEST_UNSET_KEY_ENV"))
    with pytest.raises(StorageError) as err:
        Store(spec.root, spec)
    assert "AIGC_TEST_UNSET_KEY_ENV is not set" in str(err.value)


def _list_keys(endpoint: str, bucket: str, prefix: str) -> list[str]:
    client = s3_client(endpoint)
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def _commit_and_publish(store: Store, files: dict[str, bytes], outcome: dict) -> None:
    """Commit one shard and publish; records "published" or the exception in ``outcome`` (runs in a thread)."""
    try:
        rec = commit_shard(store, "00000", files, {"items": len(files)})
        publish(store, kind="generate", job="t", spec=None, counts={"items": len(files)}, shards={"00000": rec})
        outcome["published"] = True
    except BaseException as exc:  # noqa: BLE001 - the test inspects it
        outcome["error"] = exc


def test_server_stopped_mid_write(s3_storage, moto_server):
    """moto dies while a shard is being written: one clean StorageError, and never a _SUCCESS."""
    store = Store(s3_storage.root, s3_storage)
    bucket = s3_storage.root.removeprefix("s3://").split("/")[0]
    files = {f"png/{i:05d}.png": png_like(i) for i in range(4000)}
    outcome: dict = {}

    worker = threading.Thread(target=_commit_and_publish, args=(store, files, outcome), daemon=True)
    try:
        worker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _list_keys(moto_server.endpoint, bucket, "run/png/"):
            time.sleep(0.05)  # wait until the uploads are under way
        moto_server.stop()
        worker.join(120)
        assert not worker.is_alive(), "write_many hung after the server died"
    finally:
        moto_server.stop()
        moto_server.start()  # the session's server is back for every later test (empty: moto keeps no state)

    assert "published" not in outcome
    err = outcome["error"]
    assert isinstance(err, StorageError), repr(err)
    msg = str(err)
    assert "\n" not in msg and msg.startswith(s3_storage.root)
    assert "cannot reach" in msg, msg
    # after the restart nothing claims to be published
    client = s3_client(moto_server.endpoint)
    client.create_bucket(Bucket=bucket)
    assert _list_keys(moto_server.endpoint, bucket, "run/") == []
    assert not is_published(Store(s3_storage.root, s3_storage))
    assert not verify(s3_storage.root, s3_storage).ok


def test_crash_mid_write_leaves_nothing_committed_and_rerun_publishes(s3_storage, moto_server):
    """Through a proxy that dies mid-write: no shard index, no manifest, no _SUCCESS; a rerun completes."""
    proxy = CutProxy(moto_server.port)
    proxy.start()
    spec = s3_storage.model_copy(update={"endpoint": proxy.endpoint})
    store = Store(spec.root, spec)
    bucket = spec.root.removeprefix("s3://").split("/")[0]
    files = {f"png/{i:05d}.png": png_like(i) for i in range(600)}
    outcome: dict = {}

    worker = threading.Thread(target=_commit_and_publish, args=(store, files, outcome), daemon=True)
    try:
        worker.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_list_keys(moto_server.endpoint, bucket, "run/png/")) < 50:
            time.sleep(0.05)
        proxy.cut()
        worker.join(120)
        assert not worker.is_alive()
    finally:
        proxy.cut()
    assert "published" not in outcome
    err = outcome["error"]
    assert isinstance(err, StorageError) and "\n" not in str(err), repr(err)

    time.sleep(1.0)  # let in-flight uploads that fsspec abandoned settle before looking
    left = [k.removeprefix("run/") for k in _list_keys(moto_server.endpoint, bucket, "run/")]
    assert 0 < len(left) < len(files), "the cut should have landed mid-write"
    assert all(k.startswith("png/") for k in left), "nothing but data files: no index, manifest or _SUCCESS"
    direct = Store(s3_storage.root, s3_storage)
    assert committed_shards(direct) == {} and not is_published(direct)
    report = verify(s3_storage.root, s3_storage)
    assert not report.ok and "no manifest.json" in report.problems[0]

    # the rerun (server reachable again) redoes the shard and publishes a verifiable output
    rec = commit_shard(direct, "00000", files, {"items": len(files)})
    publish(direct, kind="generate", job="t", spec=None, counts={"items": len(files)}, shards={"00000": rec})
    report = verify(s3_storage.root, s3_storage)
    assert report.ok and report.files_checked == len(files)


# --------------------------------------------------------------------------------------------- local specifics
def test_local_write_is_atomic(tmp_path):
    store = Store(str(tmp_path / "out"))
    a, b = b"a" * 300_000, b"b" * 300_000
    store.write("f.bin", a)
    seen: set[bytes] = set()
    stop = threading.Event()

    def writer():
        for i in range(150):
            store.write("f.bin", b if i % 2 == 0 else a)
        stop.set()

    t = threading.Thread(target=writer)
    t.start()
    while not stop.is_set():
        seen.add(hashlib.sha256(store.read("f.bin")).digest())
    t.join()
    assert seen <= {hashlib.sha256(a).digest(), hashlib.sha256(b).digest()}, "a reader saw a torn write"
    store.write_many({f"d/{i}.bin": b"x" for i in range(50)})
    leftovers = [p for p in (tmp_path / "out").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def test_local_file_uri_and_plain_path_are_the_same_store(tmp_path):
    Store(str(tmp_path / "o")).write("a/b.txt", b"hi")
    assert Store(f"file://{tmp_path}/o").read("a/b.txt") == b"hi"


def test_local_write_under_a_file_is_one_line(tmp_path):
    (tmp_path / "blocker").write_bytes(b"i am a file")
    store = Store(str(tmp_path / "blocker" / "out"))
    with pytest.raises(StorageError) as err:
        store.write("x.bin", b"1")
    assert str(err.value).startswith(str(tmp_path / "blocker" / "out")) and "\n" not in str(err.value)


def test_local_read_only_directory(tmp_path):
    """Root ignores chmod, so make the directory immutable (chattr +i) to get a real refusal."""
    target = tmp_path / "ro"
    target.mkdir()
    chattr = shutil.which("chattr")
    if not chattr or subprocess.run([chattr, "+i", str(target)], capture_output=True).returncode != 0:
        pytest.skip("no way to make a read-only directory here (chattr +i unavailable)")
    try:
        store = Store(str(target))
        with pytest.raises(StorageError) as err:
            store.write("x.bin", b"1")
        msg = str(err.value)
        assert msg.startswith(str(target / "x.bin")) and "permission denied" in msg and "\n" not in msg
        assert "credentials" not in msg  # a local directory has no credentials to check
        assert os.listdir(target) == []
        with pytest.raises(StorageError):
            commit_shard(store, "00000", shard_files(0))
        assert os.listdir(target) == []
    finally:
        subprocess.run([chattr, "-i", str(target)], check=True)


@pytest.mark.parametrize("rel", ["..", "../x", "a/../../x", "/etc/passwd", "s3://bucket/x", "file:///etc/x",
                                 "", "a//b", "a/./../b", "..\\x", "a\\..\\..\\x"])
def test_safe_relpath_refuses_escapes(rel, tmp_path):
    with pytest.raises(StorageError):
        safe_relpath(rel)
    store = Store(str(tmp_path / "root"))
    with pytest.raises(StorageError):
        store.write(rel, b"x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("rel", ["a", "a/b.png", "png/00001/000123.png", "_shards/00001.json", "a.b/c..d"])
def test_safe_relpath_accepts_normal_paths(rel):
    assert safe_relpath(rel) == rel


def test_verify_does_not_follow_hostile_manifest_paths(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"outside")
    spec = StorageSpec(root=str(tmp_path / "out"))
    store = Store(spec.root, spec)
    publish(store, kind="generate", job="t", spec=None, counts={}, files={"a.txt": b"a"})
    manifest = store.read_json(MANIFEST)
    manifest["files"]["../secret.txt"] = {"size": 7, "sha256": hashlib.sha256(b"outside").hexdigest()}
    store.write_json(MANIFEST, manifest)
    report = verify(spec.root, spec)
    assert not report.ok and report.missing == ["../secret.txt"]


def test_a_crashed_local_write_leaves_a_name_the_plan_knows_as_its_own(tmp_path, monkeypatch):
    """Store.write's temporary file (left when a writer dies before its rename) is one that publishing may
    clean up: plan.ours() recognises the very name Store.write uses."""
    import os as _os

    from pipeline.generate.plan import ShardPlan, ours
    from pipeline.storage import Store

    seen = []

    def crash(src, dst):
        seen.append(src)
        raise KeyboardInterrupt  # the writer dies between writing and renaming

    store = Store(str(tmp_path))
    monkeypatch.setattr(_os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.write("images/s000000/s000000000001.png", b"x")
    rel = _os.path.relpath(seen[0], tmp_path)
    assert ".tmp-" in rel and ours(rel, {"s000000": ShardPlan("s000000", start=0, count=10)},
                                   {"s000000": {"s000000000001"}})
