"""Shared fixtures: one loopback Ray cluster per session, one moto S3 server on 127.0.0.1.

Ray must see RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before it starts (loopback only; docs/architecture.md,
"Ray on a small machine").
"""

from __future__ import annotations

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import S3_KEY, S3_SECRET, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray for the whole session (2 CPUs, 1 GB object store, loopback only)."""
    import ray

    from pipeline.runtime import ensure_ray

    ensure_ray(num_cpus=2, object_store_memory=1_000_000_000)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_cpu_left_held(request):
    """After a test on the session's Ray: its CPUs are free again before the next test starts.

    A generation that fails mid-run (the full-disk fault) can leave one generation actor of its pool
    holding its CPU share until the failed run's executor is collected; a Ray Train run that needs
    every CPU would then wait for a placement forever. Wait for the CPUs, then stop what is left
    of this session's generation actors (by their actor ids, nothing else)."""
    yield
    if "ray_session" not in request.fixturenames:
        return
    import gc

    import ray

    if not ray.is_initialized():
        return
    gc.collect()  # a failed run's executor, kept alive by its traceback, shuts its actor pool down here
    total = ray.cluster_resources().get("CPU", 0)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0) >= total - 1e-6:
            return
        time.sleep(0.5)
    from ray._raylet import ActorID
    from ray.util.state import list_actors

    gcs = ray.get_runtime_context().gcs_address
    for actor in list_actors(address=gcs, filters=[("state", "!=", "DEAD")], limit=1000):
        if "ShardWorker" in (actor.class_name or ""):
            ray._private.worker.global_worker.core_worker.kill_actor(ActorID.from_hex(actor.actor_id), True)


class MotoServer:
    """moto in server mode as a child process on 127.0.0.1; can be stopped and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def bucket(self, name: str | None = None) -> str:
        import boto3

        name = name or f"b-{uuid.uuid4().hex[:10]}"
        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                     aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET).create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def s3_env(moto_server, monkeypatch):
    """Env for s3:// access to the moto server; returns the server."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_server


@pytest.fixture()
def s3_storage(s3_env):
    """A StorageSpec on a fresh bucket of the moto server."""
    from pipeline.specs import Credentials, StorageSpec

    bucket = s3_env.bucket()
    return StorageSpec(root=f"s3://{bucket}/run", endpoint=s3_env.endpoint, region="us-east-1",
                       credentials=Credentials(access_key_env="AWS_ACCESS_KEY_ID",
                                               secret_key_env="AWS_SECRET_ACCESS_KEY"))
