"""`ray start --head` + `aigc submit --wait` for real, and the deploy manifests against KubeRay's schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.submit import entrypoint

from helpers import make_package

ROOT = Path(__file__).resolve().parents[1]
CRD = json.loads((ROOT / "tests" / "data" / "kuberay_crd_keys.json").read_text())
DATE = "2026-11-28"


def _check_rayjob_spec(spec: dict) -> None:
    keys = CRD["RayJob"]
    assert set(spec) <= set(keys["spec_properties"]), set(spec) - set(keys["spec_properties"])
    rcs = spec["rayClusterSpec"]
    assert set(rcs) <= set(keys["rayClusterSpec_properties"])
    assert set(rcs["headGroupSpec"]) <= set(keys["headGroupSpec_properties"])
    for group in rcs["workerGroupSpecs"]:
        assert set(group) <= set(keys["workerGroupSpecs_item_properties"])
    assert rcs["authOptions"] == {"mode": "token"}
    # the entrypoint is the one `aigc submit` builds (which the submit test below runs for real)
    assert spec["entrypoint"] == entrypoint("jobs/nightly.yaml")
    assert (ROOT / "jobs" / "nightly.yaml").exists()
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]


def test_rayjob_manifest_matches_kuberay_schema():
    doc = yaml.safe_load((ROOT / "deploy" / "kuberay" / "rayjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    _check_rayjob_spec(doc["spec"])


def test_raycronjob_manifest_matches_kuberay_schema():
    doc = yaml.safe_load((ROOT / "deploy" / "kuberay" / "raycronjob.yaml").read_text())
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCronJob")
    spec = doc["spec"]
    keys = CRD["RayCronJob"]
    assert set(spec) <= set(keys["spec_properties"]) and set(keys["spec_required"]) <= set(spec)
    assert spec["schedule"] == "0 2 * * *" and spec["timeZone"]
    _check_rayjob_spec(spec["jobTemplate"])


def test_cluster_launcher_and_cron_files_parse():
    cfg = yaml.safe_load((ROOT / "deploy" / "cluster.yaml").read_text())
    assert cfg["head_node_type"] in cfg["available_node_types"]
    script = (ROOT / "deploy" / "cron" / "nightly.sh").read_text()
    assert "aigc submit jobs/nightly.yaml" in script and "flock -n" in script
    subprocess.run(["bash", "-n", str(ROOT / "deploy" / "cron" / "nightly.sh")], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "deploy" / "local.sh")], check=True)


@pytest.fixture()
def head(tmp_path):
    """A real `ray start --head` on test-chosen ports; stopped at the end, alone, by PID."""
    import shutil
    import tempfile

    from pipeline import localcluster

    # short: Ray's unix socket paths under the temp dir must stay under 108 bytes
    temp_dir = tempfile.mkdtemp(prefix="aigc-ray-", dir="/tmp")
    url = localcluster.start(None, None, temp_dir, num_cpus=2)  # free ports, retried on a slow start
    try:
        yield url, temp_dir
    finally:
        stopped = localcluster.stop(temp_dir)
        assert stopped > 0 and not localcluster.pids(temp_dir)
        import ray

        assert ray.is_initialized() and ray.cluster_resources().get("CPU") == 2  # the session's cluster lives on
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_wait_to_ray_start_head(head, tmp_path, ray_session):
    head, temp_dir = head
    pkg = make_package(tmp_path / "model")
    wd = tmp_path / "project"
    wd.mkdir()
    (wd / "job.yaml").write_text(f"""
name: sub
storage: {{root: {tmp_path / 'out'}}}
generate:
  model: {pkg}
  seeds: {{count: 60}}
  shard_size: 30
  scaling: {{num_actors: 1}}
""")
    (wd / ".env").write_text("AWS_SECRET_ACCESS_KEY=never-upload-me\n")
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipeline", "submit", "job.yaml", "--address", head, "--date", DATE, "--wait"]
    r = subprocess.run(cmd, cwd=wd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    sid = r.stdout.split("submitted: ", 1)[1].split()[0]
    assert sid.startswith(f"aigc-sub-{DATE}-")
    assert f"Running entrypoint for job {sid}: python -m pipeline run job.yaml --verify --date {DATE}" in r.stdout
    assert f"{sid}: SUCCEEDED" in r.stdout
    out = tmp_path / "out" / "generated" / "sub" / DATE
    v = subprocess.run([sys.executable, "-m", "pipeline", "verify", str(out)], capture_output=True, text=True)
    assert v.returncode == 0 and "OK: 63 files" in v.stdout, v.stdout + v.stderr

    # re-submitting the same date is idempotent: the same id, nothing new runs
    r2 = subprocess.run(cmd[:-1], cwd=wd, env=env, capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0 and f"already submitted (SUCCEEDED): {sid}" in r2.stdout
    st = subprocess.run([sys.executable, "-m", "pipeline", "status", sid, "--address", head], capture_output=True,
                        text=True, timeout=60)
    assert st.stdout.strip() == "SUCCEEDED"
    logs = subprocess.run([sys.executable, "-m", "pipeline", "logs", sid, "--address", head], capture_output=True,
                          text=True, timeout=60)
    assert "verify    ok" in logs.stdout
    # the working_dir Ray unpacked for the job holds the job file but never the credentials file
    unpacked = [p.parent for p in Path(temp_dir).glob("session_*/runtime_resources/working_dir_files/*/job.yaml")]
    assert unpacked and not any((d / ".env").exists() for d in unpacked)
    bad = subprocess.run([sys.executable, "-m", "pipeline", "status", "nope", "--address", head], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "no such submission" in bad.stderr and "Traceback" not in bad.stderr


def test_localcluster_start_refuses_a_taken_port_with_a_clear_message(tmp_path):
    import socket

    from pipeline import localcluster

    port, dash = localcluster.pick_ports()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port + 2))  # the dashboard agent's port
        s.listen()
        r = subprocess.run([sys.executable, "-m", "pipeline.localcluster", "start", "--port", str(port),
                            "--dashboard-port", str(dash), "--temp-dir", str(tmp_path / "r")],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"port(s) [{port + 2}] on 127.0.0.1 are in use" in r.stderr
    assert not localcluster.pids(str(tmp_path / "r"))


def test_pick_ports_gives_a_free_block():
    from pipeline import localcluster

    port, dash = localcluster.pick_ports()
    assert dash not in range(port, port + 4)
    assert all(localcluster._bindable(p) for p in (port, port + 1, port + 2, port + 3, dash))


def test_localcluster_start_retries_then_fails_with_the_cause_and_leaves_nothing_running():
    import shutil
    import tempfile

    from pipeline import localcluster

    temp_dir = tempfile.mkdtemp(prefix="aigc-ray-", dir="/tmp")  # short: unix socket paths
    with pytest.raises(RuntimeError) as e:  # below Ray's minimum object store: every attempt fails
        localcluster.start(None, None, temp_dir, num_cpus=1, object_store_memory=1, attempts=2)
    assert "ray start failed 2 times" in str(e.value) and "minimum allowed is" in str(e.value)
    assert not localcluster.pids(temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)
