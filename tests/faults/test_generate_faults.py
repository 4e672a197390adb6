"""Generation under faults: storage that dies mid-write, targets that refuse writes, actors killed
again and again. Each ends with exactly N verified items equal to a clean run, or a clear one-line
failure followed by a rerun that completes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.generate import run_generate
from pipeline.specs import validate_job
from pipeline.storage import StorageError, verify

from helpers import S3_KEY, S3_SECRET, CutProxy, files_of, make_package

DATE = "2026-11-28"


def spec(root: str, pkg: str, count: int, shard_size: int, storage: dict | None = None, actors: int = 2):
    return validate_job({
        "name": "f", "storage": {"root": root, **(storage or {})},
        "generate": {"model": pkg, "seed": 3, "seeds": {"count": count}, "shard_size": shard_size,
                     "output": "{root}/{name}/{date}",
                     "scaling": {"num_actors": actors, "num_cpus": 0.5, "batch_size": shard_size}},
    })


@pytest.fixture(scope="module")
def wide_pkg(tmp_path_factory):
    return make_package(tmp_path_factory.mktemp("pkg") / "wide", width=64)


@pytest.mark.slow  # the default suite's time budget (README: the suite); make test-slow runs it
def test_s3_dies_mid_generate_then_rerun_completes(ray_session, s3_env, wide_pkg, tmp_path):
    """The S3 link is cut while shards are being written: a clear failure, no _SUCCESS; once the
    server is back, the same command finishes and equals a clean run."""
    bucket = s3_env.bucket()
    proxy = CutProxy(s3_env.port)
    proxy.start()
    storage = {"endpoint": proxy.endpoint, "region": "us-east-1",
               "credentials": {"access_key_env": "AWS_ACCESS_KEY_ID", "secret_key_env": "AWS_SECRET_ACCESS_KEY"}}
    job = spec(f"s3://{bucket}/run", wide_pkg, 3000, 150, storage)
    s3 = boto3.client("s3", endpoint_url=s3_env.endpoint, region_name="us-east-1",
                      aws_access_key_id=S3_KEY, aws_secret_access_key=S3_SECRET)

    def keys(prefix: str) -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]

    def cutter():
        deadline = time.time() + 120
        while time.time() < deadline and len(keys(f"run/f/{DATE}/_shards/")) < 2:
            time.sleep(0.05)
        proxy.cut()

    t = threading.Thread(target=cutter, daemon=True)
    t.start()
    with pytest.raises((PipelineError, StorageError)) as err:
        run_generate(job, date=DATE, progress=False)
    t.join(5)
    msg = str(err.value)
    assert "\n" not in msg and ("cannot reach" in msg or "rerun" in msg), msg
    assert f"run/f/{DATE}/_SUCCESS" not in keys(f"run/f/{DATE}/")
    assert f"run/f/{DATE}/manifest.json" not in keys(f"run/f/{DATE}/")

    proxy.start()  # the server is back
    try:
        res = run_generate(job, date=DATE, progress=False)
    finally:
        proxy.cut()
    assert res.items == 3000 and res.shards_skipped >= 2
    direct = job.storage.model_copy(update={"endpoint": s3_env.endpoint})
    assert verify(res.output, direct).ok
    clean = run_generate(spec(str(tmp_path / "clean"), wide_pkg, 3000, 150), date=DATE, progress=False)
    assert files_of(res.output, direct) == files_of(clean.output)


def test_unwritable_target_is_one_line_and_nothing_published(ray_session, tmp_path):
    """An immutable output directory (root ignores chmod, so chattr +i): exit 1, one line, no traceback."""
    chattr = shutil.which("chattr")
    target = tmp_path / "ro"
    target.mkdir()
    if not chattr or subprocess.run([chattr, "+i", str(target)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        pkg = make_package(tmp_path / "model")
        job = tmp_path / "job.yaml"
        job.write_text(f"name: f\nstorage: {{root: {target}}}\n"
                       f"generate: {{model: {pkg}, seeds: {{count: 10}}, output: '{{root}}/{{name}}/{{date}}'}}\n")
        r = CliRunner().invoke(app, ["generate", str(job), "--date", DATE])
        assert r.exit_code == 1 and "Traceback" not in r.output
        lines = [line for line in r.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "permission denied" in lines[0] and str(target) in lines[0]
        assert os.listdir(target) == []
    finally:
        subprocess.run([chattr, "-i", str(target)], check=True)


def test_full_disk_is_one_line_and_rerun_completes(ray_session, tmp_path):
    """A 2 MiB tmpfs fills up mid-run: a clear failure; with room again, the rerun finishes."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        pkg = make_package(tmp_path / "model", width=64)
        job = spec(str(mnt), pkg, 4000, 250)
        with pytest.raises(PipelineError) as err:
            run_generate(job, date=DATE, progress=False)
        assert "no space left on device" in str(err.value) and "\n" not in str(err.value)
        assert not (mnt / "f" / DATE / "_SUCCESS").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        res = run_generate(job, date=DATE, progress=False)
        assert res.items == 4000 and verify(res.output).ok
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_actors_killed_again_and_again(ray_session, wide_pkg, tmp_path):
    """SIGKILL a generation actor every time two more shards commit, five times (cf. ray #41258)."""
    import ray
    from ray.util.state import list_actors

    gcs = ray.get_runtime_context().gcs_address
    shards = tmp_path / "f" / DATE / "_shards"
    killed: list[int] = []

    def killer():
        deadline = time.time() + 300
        next_at = 2
        while time.time() < deadline and len(killed) < 5:
            if len(list(shards.glob("*.json"))) >= next_at:
                alive = [a for a in list_actors(address=gcs, filters=[("state", "=", "ALIVE")], limit=1000)
                         if "ShardWorker" in (a.class_name or "")]
                if alive:
                    os.kill(alive[len(killed) % len(alive)].pid, signal.SIGKILL)
                    killed.append(alive[0].pid)
                    next_at += 2
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = run_generate(spec(str(tmp_path), wide_pkg, 12000, 250), date=DATE, progress=False)
    t.join(1)
    assert len(killed) >= 3, killed
    assert res.items == 12000 and verify(res.output).ok
    clean = run_generate(spec(str(tmp_path / "clean"), wide_pkg, 12000, 250), date=DATE, progress=False)
    assert files_of(res.output) == files_of(clean.output)


@pytest.mark.slow
def test_node_removed_mid_run(tmp_path, wide_pkg):
    """A 3-node ray.cluster_utils.Cluster loses a worker node mid-run; the run still completes exactly.

    Runs in its own process: it needs its own cluster, not the session's."""
    import sys

    script = Path(__file__).with_name("node_loss_run.py")
    r = subprocess.run([sys.executable, str(script), wide_pkg, str(tmp_path)], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, RAY_ADDRESS=""))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "NODE REMOVED" in r.stdout and "VERIFIED 8000" in r.stdout
