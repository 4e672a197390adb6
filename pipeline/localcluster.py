"""A `ray start --head` cluster on this machine, on chosen ports, that can be stopped alone.

    python -m pipeline.localcluster start --port 6390 --dashboard-port 8266 --temp-dir /tmp/aigc-ray
    python -m pipeline.localcluster stop --temp-dir /tmp/aigc-ray

`ray stop` stops every Ray process on the machine, including other people's clusters and a test
session's own. This module stops only the processes of the cluster it started: those whose command
line names its ``--temp-dir``, by PID (SIGTERM, then SIGKILL after a grace period).
Ray listens on 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def _env() -> dict[str, str]:
    # `python` in a job's entrypoint must be this environment's interpreter, as in a cluster image.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return dict(os.environ, PATH=path, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")


def start(port: int, dashboard_port: int, temp_dir: str, num_cpus: int | None = None,
          object_store_memory: int = 1_000_000_000, timeout_s: float = 60) -> str:
    """Start the head; returns the dashboard URL once its Job API answers."""
    ray = Path(sys.executable).with_name("ray")
    cmd = [str(ray), "start", "--head", f"--port={port}", f"--dashboard-port={dashboard_port}",
           "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}", f"--object-store-memory={object_store_memory}",
           "--disable-usage-stats", f"--ray-client-server-port={port + 1}",
           f"--dashboard-agent-listen-port={port + 2}", f"--metrics-export-port={port + 3}"]
    if num_cpus is not None:
        cmd.append(f"--num-cpus={num_cpus}")
    r = subprocess.run(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"ray start failed (exit {r.returncode}): {r.stdout.strip()[-1500:]}")
    url = f"http://127.0.0.1:{dashboard_port}"
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return url
        except urllib.error.HTTPError:  # 401 without a token: the server is up
            return url
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"dashboard at {url} did not come up in {timeout_s:.0f}s")


def pids(temp_dir: str) -> list[int]:
    """PIDs of the processes whose command line names ``temp_dir`` (this cluster's, nobody else's)."""
    key = os.path.abspath(temp_dir).encode()
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if key in cmd:
            out.append(int(pid))
    return out


def stop(temp_dir: str, grace_s: float = 10) -> int:
    """SIGTERM this cluster's processes, SIGKILL what is left after ``grace_s``. Returns how many.

    Repeats until none is left: a raylet may still fork a worker while it is being stopped.
    """
    stopped: set[int] = set()
    for _ in range(5):
        found = pids(temp_dir)
        if not found:
            break
        stopped.update(found)
        for pid in found:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace_s
        while time.time() < deadline and any(_alive(p) for p in found):
            time.sleep(0.2)
        for pid in found:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(p) for p in found):
            time.sleep(0.1)
    return len(stopped)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m pipeline.localcluster")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--port", type=int, default=6390)
    s.add_argument("--dashboard-port", type=int, default=8266)
    s.add_argument("--temp-dir", default="/tmp/aigc-ray")
    s.add_argument("--num-cpus", type=int)
    t = sub.add_parser("stop")
    t.add_argument("--temp-dir", default="/tmp/aigc-ray")
    a = ap.parse_args()
    if a.cmd == "start":
        print(start(a.port, a.dashboard_port, a.temp_dir, a.num_cpus))
    else:
        print(f"stopped {stop(a.temp_dir)} processes")


if __name__ == "__main__":
    main()
