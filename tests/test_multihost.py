"""Two real hosts (network namespaces, tests/hosts.py): training across hosts with no hand-set network
variables, generation on both, through `ray job submit` and `aigc submit`, and what a lost host, a cut
link or an unreachable S3 host costs.

The cluster: h0 runs the Ray head, h1 a Ray worker node, h2 the S3 server (moto), each at its own
address on one switch; every host's /etc/hosts resolves the hostname to 127.0.1.1, as default
Debian/Ubuntu VMs do, so gloo left alone would advertise loopback. One Train worker per host: each
node has one `trainer` resource and each worker asks for one.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline.specs import deep_merge

from helpers import S3_KEY, S3_SECRET
from hosts import Hosts, unavailable

ROOT = Path(__file__).resolve().parents[1]
DATE = "2026-12-01"
BUCKET = "aigc"


def _require_hosts() -> None:
    why = unavailable()
    if why is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"multi-host tests {why}: CI must run them (.ci/run runs as root and installs iproute2)")
    pytest.skip(f"multi-host tests {why}")


class Cluster:
    """The three hosts, their Ray nodes and the S3 server, plus helpers to run the CLI on a host."""

    def __init__(self, hosts: Hosts) -> None:
        self.hosts = hosts
        self.head, self.worker, self.storage = hosts[0], hosts[1], hosts[2]
        for h in hosts:  # the hostname resolves to loopback on every host, as on default Debian/Ubuntu
            hosts.resolve_hostname_to(h, "127.0.1.1")
        self.endpoint = hosts.moto(self.storage)
        env = hosts.env
        env.update({"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": self.endpoint})
        self.url = hosts.ray_head(self.head, num_cpus=2, resources={"trainer": 1})
        self.start_worker()
        r = self.python(f"import boto3; boto3.client('s3').create_bucket(Bucket={BUCKET!r})")
        assert r.returncode == 0, r.stderr

    def start_worker(self) -> None:
        self.hosts.ray_worker(self.worker, self.head, num_cpus=2, resources={"trainer": 1})

    def lose_worker(self) -> None:
        """The worker host dies (every process SIGKILLed); returns once the GCS has noticed."""
        assert self.hosts.lose(self.worker) > 0
        self.hosts.wait_node_dead(self.head, self.worker)

    def ensure_worker(self) -> None:
        """A worker node alive on the worker host again (a replacement VM), for the tests after."""
        if not any(ip == self.worker.ip for _, ip in self.hosts.alive_nodes(self.head)):
            self.start_worker()

    def python(self, code: str, host=None, timeout: float = 120):
        return self.hosts.run(host or self.head, [sys.executable, "-c", code], timeout=timeout)

    def aigc(self, *args: str, host=None, timeout: float = 600, cwd=None):
        return self.hosts.run(host or self.head, [sys.executable, "-m", "pipeline", *args], timeout=timeout, cwd=cwd)

    def job_dir(self, tmp: Path, name: str, **over) -> Path:
        """A working dir holding ``job.yaml``: a small DCGAN trained by 2 workers (one per host) with
        checkpoints in S3, then 200 items by 2 actors, published to S3."""
        spec = {
            "name": name,
            "storage": {"root": f"s3://{BUCKET}/{name}", "endpoint": self.endpoint, "region": "us-east-1",
                        "credentials": {"access_key_env": "AWS_ACCESS_KEY_ID",
                                        "secret_key_env": "AWS_SECRET_ACCESS_KEY"}},
            "env": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
            "train": {"data": {"source": "digits", "limit": 256},
                      "model": {"image_size": 32, "z_dim": 16, "g_width": 8, "d_width": 8, "conditional": True},
                      "epochs": 2, "batch_size": 32, "seed": 3,
                      "scaling": {"num_workers": 2, "cpus_per_worker": 1, "resources_per_worker": {"trainer": 1}},
                      "checkpoint": {"keep": 2, "max_failures": 2}},
            "generate": {"seeds": {"count": 200}, "shard_size": 50, "scaling": {"num_actors": 2, "num_cpus": 0.5}},
        }
        for k, v in over.items():  # a section merged in, or left out with None
            if v is None:
                spec.pop(k, None)
            else:
                spec[k] = deep_merge(spec.get(k) or {}, v) if isinstance(v, dict) else v
        d = tmp / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "job.yaml").write_text(yaml.safe_dump(spec))
        os.chmod(tmp, 0o755)
        return d

    def manifest(self, name: str) -> dict:
        """The published manifest of ``name``'s output, read from S3 on the head host."""
        r = self.python("import boto3, sys; sys.stdout.write(boto3.client('s3').get_object(Bucket="
                        f"{BUCKET!r}, Key='{name}/generated/{name}/{DATE}/manifest.json')['Body'].read().decode())")
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout)

    def verify(self, name: str):
        """`aigc verify` of the run's S3 output, from the head host."""
        return self.aigc("verify", f"s3://{BUCKET}/{name}/generated/{name}/{DATE}", timeout=300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _require_hosts()
    hosts = Hosts(3, tmp_path_factory.mktemp("hosts"))
    try:
        yield Cluster(hosts)
    except BaseException:
        print(hosts.log_tail())
        raise
    finally:
        hosts.close()


def _submit(cluster: Cluster, wd: Path, *extra: str, timeout: float = 900, wait: bool = True):
    """The plain Ray client, as a user types it on the head: ray job submit --working-dir ... -- aigc run"""
    env = dict(cluster.hosts.env)
    assert "GLOO_SOCKET_IFNAME" not in env and "NCCL_SOCKET_IFNAME" not in env
    cmd = ["ray", "job", "submit", "--address", cluster.url, "--working-dir", str(wd), *([] if wait else ["--no-wait"]),
           "--", "python", "-m", "pipeline", "run", "job.yaml", "--verify", "--date", DATE, *extra]
    return cluster.hosts.run(cluster.head, cmd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def trained(cluster, tmp_path_factory):
    """The two-host train + generate run through `ray job submit`; its output and model package URI."""
    assert cluster.hosts.resolves_to_loopback(cluster.worker)  # the case gloo gets wrong when left alone
    wd = cluster.job_dir(tmp_path_factory.mktemp("wd"), "twohost")
    r = _submit(cluster, wd)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Job 'raysubmit_" in out and "succeeded" in out, out[-6000:] + cluster.hosts.log_tail()
    package = re.search(r"→ (s3://aigc/twohost/models/twohost/\w+)", out)
    assert package, out[-3000:]
    return {"out": out, "package": package.group(1)}


def test_ray_job_submit_trains_on_two_hosts_and_publishes_verified_output_to_s3(cluster, trained):
    out = trained["out"]
    # two workers on two nodes (one `trainer` resource per host), no GLOO_SOCKET_IFNAME set by anyone
    assert "on 2 worker(s), 2 node(s)" in out and re.search(r"train\s+done .* 2 epochs, 256 images", out), out[-3000:]
    assert re.search(r"verify\s+ok .* 205 files checked", out), out[-3000:]
    assert _ran_on(cluster.worker, "RayTrainWorker") and _ran_on(cluster.head, "RayTrainWorker")
    assert _ran_on(cluster.worker, "ShardWorker") and _ran_on(cluster.head, "ShardWorker")
    v = cluster.verify("twohost")
    assert v.returncode == 0 and "OK: 205 files" in v.stdout, v.stdout + v.stderr


def _commits(cluster: Cluster, name: str) -> int:
    """Committed shards of ``name``'s output, counted in S3 from the head host (-1: S3 unreachable)."""
    code = ("import boto3, botocore.config as c; s3 = boto3.client('s3', config=c.Config(connect_timeout=3, "
            "retries={'total_max_attempts': 1})); "
            f"r = s3.list_objects_v2(Bucket={BUCKET!r}, Prefix='{name}/generated/{name}/{DATE}/_shards/'); "
            "print(sum(o['Key'].endswith('.json') and '.tmp-' not in o['Key'] for o in r.get('Contents', [])))")
    r = cluster.python(code, timeout=60)
    return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else -1


def _wait_for(pred, timeout: float, what: str, every: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _generate_job(cluster: Cluster, tmp: Path, name: str, package: str, count: int, **over) -> Path:
    return cluster.job_dir(tmp, name, train=None,
                           generate={"model": package, "seeds": {"count": count}, "shard_size": 50,
                                     "scaling": {"num_actors": 2, "num_cpus": 0.5, "batch_size": 25}}, **over)


def _log(cluster: Cluster, name: str) -> str:
    return (cluster.head.logs / f"{name}.log").read_text(errors="replace")


def _checkpoints(cluster: Cluster, name: str) -> int:
    """Ray Train checkpoints of ``name`` in S3 (their state files), counted from the head host."""
    code = ("import boto3; p = boto3.client('s3').get_paginator('list_objects_v2'); "
            f"print(sum(o['Key'].endswith('/state.json') and '/epoch_' in o['Key'] for page in "
            f"p.paginate(Bucket={BUCKET!r}, Prefix='{name}/') for o in page.get('Contents', [])))")
    r = cluster.python(code, timeout=60)
    return int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip() else 0


@pytest.mark.slow
def test_aigc_submit_survives_losing_a_worker_host_mid_generation(cluster, trained, tmp_path):
    """The worker host dies while both hosts generate: the driver on the head says so in one line, Ray
    redoes the shards in flight on the head, and the output holds exactly N verified items, no shard
    twice. `aigc submit --wait` is the client."""
    n = 1000
    wd = _generate_job(cluster, tmp_path, "lostgen", trained["package"], n)
    sub = cluster.hosts.popen(cluster.head, [sys.executable, "-m", "pipeline", "submit", "job.yaml", "--address",
                                            cluster.url, "--date", DATE, "--wait"], "submit-lostgen", cwd=wd)
    _wait_for(lambda: _commits(cluster, "lostgen") >= 2, 300, "two committed shards")
    cluster.lose_worker()
    try:
        sub.wait(600)
        log = (cluster.worker.logs.parent / "h0-logs" / "submit-lostgen.log").read_text(errors="replace")
        if sub.returncode != 0:  # Ray gave up on the lost work: one clear line, and a rerun completes
            assert "Traceback" not in log, log[-3000:]
            cluster.start_worker()
            again = cluster.aigc("submit", "job.yaml", "--address", cluster.url, "--date", DATE, "--wait", cwd=wd)
            log += again.stdout + again.stderr
            assert again.returncode == 0, log[-4000:]
    finally:
        cluster.ensure_worker()
    lost = [ln for ln in log.splitlines() if "lost Ray node" in ln]
    assert len(lost) >= 1 and cluster.worker.ip in lost[0], log[-4000:]
    assert ": SUCCEEDED" in log, log[-4000:]
    v = cluster.verify("lostgen")
    assert v.returncode == 0 and "OK:" in v.stdout, v.stdout + v.stderr
    counts = cluster.manifest("lostgen")["counts"]
    assert counts["items"] == n and counts["shards"] == n // 50, (counts, log[-3000:])
    assert _commits(cluster, "lostgen") == n // 50  # one commit per shard: none twice, none half-written


def _ran_on(host, actor: str) -> bool:
    """Whether an actor of class ``actor`` ran on ``host``: Ray names each worker's log file after it."""
    return any(actor in f.read_text(errors="replace")[:4000]
               for f in Path(host.temp_dir).glob("session_*/logs/worker-*.out") if f.is_file())


@pytest.mark.slow
def test_losing_the_worker_host_mid_training_resumes_from_the_last_s3_checkpoint(cluster, tmp_path):
    """The worker host dies after a checkpoint reached S3: the driver says so in one line; once a host
    is back (a new VM in its place), Ray Train restarts both workers from that checkpoint and the run
    completes; had Ray given up instead, a rerun resumes from the same checkpoint."""
    wd = cluster.job_dir(tmp_path, "losttrain", generate=None,
                         train={"epochs": 20, "data": {"limit": 512}, "checkpoint": {"keep": 3}})
    sub = cluster.hosts.popen(cluster.head, ["ray", "job", "submit", "--address", cluster.url, "--working-dir",
                                             str(wd), "--", "python", "-m", "pipeline", "run", "job.yaml", "--date",
                                             DATE], "losttrain")
    assert sorted(ip for _, ip in cluster.hosts.alive_nodes(cluster.head)) == [cluster.head.ip, cluster.worker.ip]
    _wait_for(lambda: _checkpoints(cluster, "losttrain") >= 1, 400, "a checkpoint in S3")
    cluster.lose_worker()
    try:
        _wait_for(lambda: "lost Ray node" in _log(cluster, "losttrain") or sub.poll() is not None, 120,
                  "the driver to report the lost host")
        cluster.start_worker()  # a replacement host joins
        sub.wait(900)
        log = _log(cluster, "losttrain")
        if sub.returncode != 0:
            assert "Traceback" not in log.split("Running entrypoint", 1)[-1], log[-3000:]
            again = _submit(cluster, wd)
            log += again.stdout + again.stderr
            assert again.returncode == 0, log[-4000:]
    finally:
        cluster.ensure_worker()
    print(log[-4000:])
    lost = [ln for ln in log.splitlines() if "lost Ray node" in ln]
    assert lost and cluster.worker.ip in lost[0], log[-4000:]
    assert re.search(r"train: resuming after epoch \d+: epoch \d+/20 on 2 worker\(s\), 2 node\(s\)", log), log[-4000:]
    assert re.search(r"train: done 160/160 steps", log), log[-4000:]


@pytest.mark.slow
def test_an_unreachable_s3_host_fails_in_one_line_and_keeps_committed_shards(cluster, trained, tmp_path):
    """The S3 host's link goes down mid-generation: the run fails with one line naming the storage
    problem, the shards committed before the cut are still there once the link is back, and a rerun
    completes with exactly N items."""
    n = 1500
    wd = _generate_job(cluster, tmp_path, "cutgen", trained["package"], n, storage={"max_retries": 1})
    sub = cluster.hosts.popen(cluster.head, ["ray", "job", "submit", "--address", cluster.url, "--working-dir",
                                             str(wd), "--", "python", "-m", "pipeline", "run", "job.yaml", "--date",
                                             DATE], "cutgen")
    _wait_for(lambda: _commits(cluster, "cutgen") >= 2, 300, "two committed shards")
    cluster.hosts.cut(cluster.storage)
    try:
        sub.wait(900)
    finally:
        cluster.hosts.heal(cluster.storage)
    log = _log(cluster, "cutgen")
    print(log[-4000:])
    assert sub.returncode != 0, log[-3000:]
    ours = log.split("Running entrypoint", 1)[-1]
    errors = sorted({ln for ln in ours.splitlines() if ln.startswith("error:")})  # Ray's client repeats the tail
    assert len(errors) == 1 and "committed shards are kept" in errors[0], ours[-3000:]
    kept = _commits(cluster, "cutgen")
    assert kept >= 2, kept
    again = _submit(cluster, wd)
    out = again.stdout + again.stderr
    assert again.returncode == 0 and "resuming" in out, out[-3000:]
    counts = cluster.manifest("cutgen")["counts"]
    assert counts["items"] == n and _commits(cluster, "cutgen") == n // 50


_GLOO_CHECK = '''
"""One gloo all-reduce between a process on each host, with or without the interface pinned."""
import datetime, os, sys
import ray

@ray.remote(num_cpus=0, resources={"trainer": 1}, max_retries=0)
def member(rank, master, pin):
    import torch, torch.distributed as dist
    from pipeline.train.rendezvous import pin_interfaces
    if pin:
        pin_interfaces()
    try:
        dist.init_process_group("gloo", init_method=f"tcp://{master}:29555", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=20))
        t = torch.ones(1)
        dist.all_reduce(t)
        dist.destroy_process_group()
        return f"ok {t.item():g}"
    except Exception as e:
        return "failed: " + " ".join(str(e).split())[:300]

ray.init()
master = ray.util.get_node_ip_address()  # the head's Ray node IP: the store listens there
pin = sys.argv[1] == "pinned"
print("RESULT", ray.get([member.remote(r, master, pin) for r in range(2)]))
'''


@pytest.mark.slow
def test_without_the_interface_pinning_gloo_fails_across_these_hosts(cluster, tmp_path):
    """The harness really shows the bug: a plain gloo group between the two hosts, left to take its
    address from the hostname, times out connecting to 127.0.0.1; pinned as every Train worker is
    (pipeline.train.rendezvous.pin_interfaces), the same all-reduce succeeds."""
    wd = tmp_path / "gloo"
    wd.mkdir()
    (wd / "gloo_check.py").write_text(_GLOO_CHECK)
    os.chmod(tmp_path, 0o755)
    results = {}
    for mode in ("plain", "pinned"):
        r = cluster.hosts.run(cluster.head, ["ray", "job", "submit", "--address", cluster.url, "--working-dir",
                                             str(wd), "--", "python", "gloo_check.py", mode], timeout=300)
        line = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("RESULT")]
        assert line, (r.stdout + r.stderr)[-3000:]
        results[mode] = line[0]
    print(results)
    plain = results["plain"]
    assert "failed" in plain and ("127.0.0.1" in plain or "127.0.1.1" in plain), results
    assert results["pinned"] == "RESULT ['ok 2', 'ok 2']", results
