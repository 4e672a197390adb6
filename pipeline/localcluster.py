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
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def _env() -> dict[str, str]:
    # `python` in a job's entrypoint must be this environment's interpreter, as in a cluster image.
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return dict(os.environ, PATH=path, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_ports(tries: int = 50) -> tuple[int, int]:
    """A GCS port whose next three (client server, dashboard agent, metrics) are free too, and a dashboard port."""
    for _ in range(tries):
        port, dash = free_port(), free_port()
        block = {port, port + 1, port + 2, port + 3}
        if dash not in block and port + 3 < 65536 and all(map(_bindable, block | {dash})):
            return port, dash
    raise RuntimeError("no free block of 4 consecutive ports on 127.0.0.1")


def _log_tail(temp_dir: str, lines: int = 15) -> str:
    """The last lines of the head's error logs: why a raylet or the GCS did not come up."""
    logs = Path(temp_dir) / "session_latest" / "logs"
    out = []
    for name in ("gcs_server.err", "raylet.err", "raylet.out", "dashboard_agent.log"):
        f = logs / name
        if f.is_file() and f.stat().st_size:
            tail = f.read_text(errors="replace").strip().splitlines()[-lines:]
            out.append(f"--- {f}\n" + "\n".join(tail))
    return "\n".join(out)


def start(port: int | None, dashboard_port: int | None, temp_dir: str, num_cpus: int | None = None,
          object_store_memory: int = 1_000_000_000, timeout_s: float = 60, attempts: int = 3) -> str:
    """Start the head; returns the dashboard URL once its Job API answers.

    ``port`` and ``dashboard_port`` None: free ones are picked (afresh on each attempt). The head also
    takes ``port + 1..3`` (client server, dashboard agent, metrics). `ray start` gives a raylet 30 s to
    register with the GCS; on a loaded machine that can run out, so a failed start is stopped (its
    processes only, by PID) and tried again, up to ``attempts`` times, before the error is raised with
    the tail of the head's logs.
    """
    auto = port is None or dashboard_port is None
    error = ""
    for attempt in range(1, attempts + 1):
        if auto:
            port, dashboard_port = pick_ports()
        taken = [p for p in (port, port + 1, port + 2, port + 3, dashboard_port) if not _bindable(p)]
        if taken:
            raise RuntimeError(f"ray start: port(s) {taken} on 127.0.0.1 are in use; choose other "
                               "--port/--dashboard-port")
        try:
            return _start_once(port, dashboard_port, temp_dir, num_cpus, object_store_memory, timeout_s)
        except RuntimeError as e:
            error = f"{e}\n{_log_tail(temp_dir)}".strip()
            stop(temp_dir, grace_s=3)  # a head that did not come up holds nothing worth a longer wait
            if attempt < attempts:
                print(f"ray start: attempt {attempt} of {attempts} failed; retrying: {str(e).splitlines()[-1][:300]}",
                      file=sys.stderr)
                time.sleep(2 * attempt)
    raise RuntimeError(f"ray start failed {attempts} times; last: {error[-4000:]}")


def _start_once(port: int, dashboard_port: int, temp_dir: str, num_cpus: int | None,
                object_store_memory: int, timeout_s: float) -> str:
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
    s.add_argument("--port", type=int, default=6390, help="GCS port; the head also takes the next three")
    s.add_argument("--dashboard-port", type=int, default=8266)
    s.add_argument("--temp-dir", default="/tmp/aigc-ray")
    s.add_argument("--num-cpus", type=int)
    t = sub.add_parser("stop")
    t.add_argument("--temp-dir", default="/tmp/aigc-ray")
    a = ap.parse_args()
    if a.cmd == "start":
        try:
            print(start(a.port, a.dashboard_port, a.temp_dir, a.num_cpus))
        except RuntimeError as e:
            sys.exit(f"error: {e}")
    else:
        print(f"stopped {stop(a.temp_dir)} processes")


if __name__ == "__main__":
    main()
