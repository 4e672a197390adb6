"""Real hosts for multi-host tests: network namespaces, each with its own address and its own Ray node.

Every multi-node test on ``ray.cluster_utils.Cluster`` runs its nodes on 127.0.0.1 in one network
stack, which cannot catch what breaks between hosts (gloo advertising loopback, a rendezvous on a
host name, a cut link). Here each host is a Linux network namespace (``ip netns``) whose one
interface, ``eth0``, is a veth into a bridge that lives in a namespace of its own (the "switch"),
with an address in a private test range (10.231.x.0/24). Nothing in the machine's own namespace is
touched: traffic stays between these namespaces. The hosts share the machine's file system, its
/etc/hosts (where the hostname resolves to loopback, as on default Debian/Ubuntu VMs) and its
hostname, just as cloned VMs do.

    with Hosts(2) as hosts:
        head, worker = hosts
        url = hosts.ray_head(head, num_cpus=1, resources={"trainer": 1})
        hosts.ray_worker(worker, num_cpus=1, resources={"trainer": 1})
        hosts.run(head, ["ray", "job", "submit", "--address", url, "--", "python", "-c", "..."])

A host is "lost" with :meth:`Hosts.lose` (every process in it killed at once, as on power loss) or cut
off with :meth:`Hosts.cut` (its link to the switch down). :meth:`Hosts.close` kills exactly the
processes inside the namespaces (``ip netns pids``), by PID, and deletes the namespaces, also when a
test fails. Creating namespaces needs root: :func:`unavailable` says why not, for a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = os.path.dirname(sys.executable)
GCS_PORT = 6379
DASHBOARD_PORT = 8265
S3_PORT = 5000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why network-namespace hosts cannot be made here, or None when they can (tried for real)."""
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (Debian: apt-get install iproute2)"
    if os.geteuid() != 0:
        return "needs root to create network namespaces (ip netns add)"
    probe = f"aigc-probe-{os.getpid()}"
    r = _ip("netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"ip netns add failed: {r.stderr.strip()[:200]}"
    _ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """One host: a network namespace with ``eth0`` at ``ip``, a Ray temp dir of its own."""

    name: str
    ns: str
    ip: str
    port: str  # its veth's far end, in the switch namespace: down = the host's cable cut
    temp_dir: str
    logs: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def pids(self) -> list[int]:
        r = _ip("netns", "pids", self.ns, check=False)
        return [int(p) for p in r.stdout.split()]


class Hosts:
    """``n`` hosts on one switch (a bridge); a context manager that always cleans up."""

    def __init__(self, n: int = 2, workdir: str | Path | None = None) -> None:
        tag = uuid.uuid4().hex[:6]
        self.subnet = f"10.231.{int(tag[:2], 16) % 250 + 1}"
        self.switch = f"aigc-{tag}-sw"
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="aigc-hosts-"))
        self.hosts: list[Host] = []
        self.env = self._base_env()
        _ensure_auth_token(self.env)
        self._namespaces: list[str] = []
        try:
            self._create(n, tag)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ the network
    def _create(self, n: int, tag: str) -> None:
        _ip("netns", "add", self.switch)
        self._namespaces.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        for i in range(n):
            ns, port = f"aigc-{tag}-h{i}", f"p{i}"
            _ip("netns", "add", ns)
            self._namespaces.append(ns)
            # the veth pair is made in the host's namespace; its far end moves into the switch
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", port)
            _ip("-n", ns, "link", "set", port, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", port, "master", "br0")
            _ip("-n", self.switch, "link", "set", port, "up")
            ip = f"{self.subnet}.{i + 1}"
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            # short: Ray's unix socket paths under the temp dir must stay under 108 bytes
            temp_dir = tempfile.mkdtemp(prefix=f"aigc-{tag}-h{i}-", dir="/tmp")
            logs = self.workdir / f"h{i}-logs"
            logs.mkdir(parents=True, exist_ok=True)
            self.hosts.append(Host(f"h{i}", ns, ip, port, temp_dir, logs))

    def __iter__(self):
        return iter(self.hosts)

    def __getitem__(self, i: int) -> Host:
        return self.hosts[i]

    def __enter__(self) -> "Hosts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def _base_env() -> dict[str, str]:
        """A cluster node's environment: this venv first on PATH, as in a cluster image. Ray's
        loopback-only switch is removed, so every node takes its host's address, exactly as on a
        user's VMs; the namespaces are the only network these processes see."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS", "GLOO_SOCKET_IFNAME",
                            "NCCL_SOCKET_IFNAME", "PYTEST_CURRENT_TEST")}
        env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        # Ray 2.60's token auth, as a real cluster runs it: every node and client reads the one token
        # (~/.ray/auth_token here, on a cluster the image or a secret puts it there)
        env["RAY_AUTH_MODE"] = "token"
        return env

    def resolve_hostname_to(self, host: Host, ip: str) -> None:
        """Give ``host`` an /etc/hosts that maps the machine's hostname to ``ip`` (``ip netns exec``
        bind-mounts /etc/netns/<ns>/hosts over /etc/hosts for every process it starts)."""
        d = Path("/etc/netns") / host.ns
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts").write_text(f"127.0.0.1\tlocalhost\n{ip}\t{socket.gethostname()}\n")

    def resolves_to_loopback(self, host: Host) -> bool:
        """Whether, inside ``host``, the hostname resolves to a 127.x address."""
        r = self.run(host, [sys.executable, "-c", "import socket; print(socket.gethostbyname(socket.gethostname()))"],
                     timeout=30)
        return r.stdout.strip().startswith("127.")

    # ------------------------------------------------------------------ processes
    def popen(self, host: Host, cmd: list[str], name: str, env: dict[str, str] | None = None,
              cwd: str | Path | None = None) -> subprocess.Popen:
        """Start ``cmd`` inside ``host``; its output goes to ``<workdir>/<host>-logs/<name>.log``."""
        log = open(host.logs / f"{name}.log", "ab")
        p = subprocess.Popen(["ip", "netns", "exec", host.ns, *cmd], env=env or self.env, cwd=cwd,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        host.procs.append(p)
        return p

    def run(self, host: Host, cmd: list[str], env: dict[str, str] | None = None, timeout: float = 600,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside ``host`` to its end; stdout and stderr captured."""
        return subprocess.run(["ip", "netns", "exec", host.ns, *cmd], env=env or self.env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)

    def ray_head(self, host: Host, num_cpus: int = 1, resources: dict | None = None,
                 object_store_memory: int = 400_000_000) -> str:
        """``ray start --head`` on ``host`` at its own address; returns the dashboard URL once the Job
        API answers."""
        r = self.run(host, ["ray", "start", "--head", f"--node-ip-address={host.ip}", f"--port={GCS_PORT}",
                            f"--dashboard-port={DASHBOARD_PORT}", "--dashboard-host=0.0.0.0",
                            f"--temp-dir={host.temp_dir}", f"--num-cpus={num_cpus}",
                            f"--resources={json.dumps(resources or {})}",
                            f"--object-store-memory={object_store_memory}", "--disable-usage-stats"], timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"ray start --head on {host.name} failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
        url = f"http://{host.ip}:{DASHBOARD_PORT}"
        self.wait_port(host, host.ip, DASHBOARD_PORT)
        return url

    def ray_worker(self, host: Host, head: Host, num_cpus: int = 1, resources: dict | None = None,
                   object_store_memory: int = 400_000_000) -> None:
        """``ray start --address HEAD`` on ``host``; returns once the head's GCS reports a new node alive
        at the host's address (a restarted host is a new node)."""
        before = set(self.alive_nodes(head))
        r = self.run(host, ["ray", "start", f"--address={head.ip}:{GCS_PORT}", f"--node-ip-address={host.ip}",
                            f"--temp-dir={host.temp_dir}", f"--num-cpus={num_cpus}",
                            f"--resources={json.dumps(resources or {})}",
                            f"--object-store-memory={object_store_memory}", "--disable-usage-stats"], timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"ray start on {host.name} failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
        deadline = time.time() + 60
        while time.time() < deadline:
            if any(ip == host.ip for _, ip in set(self.alive_nodes(head)) - before):
                return
            time.sleep(1)
        raise RuntimeError(f"the Ray node on {host.name} did not join the head in 60 s")

    def alive_nodes(self, head: Host) -> list[tuple[str, str]]:
        """(node id, node IP) of every node the head's GCS reports alive."""
        r = self.run(head, [sys.executable, "-c", _NODES_PY, f"{head.ip}:{GCS_PORT}"], timeout=60)
        return [tuple(line.split()) for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []

    def wait_node_dead(self, head: Host, host: Host, timeout: float = 120) -> None:
        """Until the GCS has marked every node at ``host``'s address dead (it misses heartbeats first)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not any(ip == host.ip for _, ip in self.alive_nodes(head)):
                return
            time.sleep(1)
        raise RuntimeError(f"the GCS still reports {host.name}'s node alive after {timeout:.0f} s")

    def moto(self, host: Host) -> str:
        """A moto S3 server on ``host``; returns its endpoint URL."""
        self.popen(host, [os.path.join(VENV_BIN, "moto_server"), "-H", host.ip, "-p", str(S3_PORT)], "moto")
        self.wait_port(host, host.ip, S3_PORT)
        return f"http://{host.ip}:{S3_PORT}"

    def wait_port(self, host: Host, ip: str, port: int, timeout: float = 60) -> None:
        """Wait until ``ip:port`` accepts a connection, seen from inside ``host``."""
        probe = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=1).close()"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.run(host, [sys.executable, "-c", probe], timeout=30).returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{ip}:{port} did not answer from {host.name} in {timeout:.0f} s")

    # ------------------------------------------------------------------ faults
    def lose(self, host: Host) -> int:
        """The host dies at once: SIGKILL to every process in it (power loss). Returns how many."""
        found = host.pids()
        for pid in found:
            _kill(pid, signal.SIGKILL)
        return len(found)

    def cut(self, host: Host) -> None:
        """Pull the host's cable: its port on the switch goes down (its processes live on)."""
        _ip("-n", self.switch, "link", "set", host.port, "down")

    def heal(self, host: Host) -> None:
        _ip("-n", self.switch, "link", "set", host.port, "up")

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop every process inside the namespaces (by PID: TERM, then KILL), delete the namespaces
        and the hosts' temp dirs."""
        for host in self.hosts:
            found = host.pids()
            for pid in found:
                _kill(pid, signal.SIGTERM)
            deadline = time.time() + 8
            while time.time() < deadline and host.pids():
                time.sleep(0.2)
            for _ in range(5):
                left = host.pids()
                if not left:
                    break
                for pid in left:
                    _kill(pid, signal.SIGKILL)
                time.sleep(0.3)
            for p in host.procs:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for ns in reversed(self._namespaces):
            _ip("netns", "del", ns, check=False)
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        self._namespaces.clear()
        for host in self.hosts:
            shutil.rmtree(host.temp_dir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of every host's logs (Ray's error logs included), for a failing assert."""
        out = []
        for host in self.hosts:
            files = sorted(host.logs.glob("*.log")) + sorted(
                Path(host.temp_dir).glob("session_latest/logs/*.err"))
            for f in files:
                text = f.read_text(errors="replace").strip()
                if text:
                    out.append(f"--- {host.name}: {f.name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)


def _ensure_auth_token(env: dict[str, str]) -> None:
    """Token auth needs one token that every node and client reads: on a fresh machine (a CI run with no
    Ray started yet) none exists, so make it where Ray looks (~/.ray/auth_token), as an operator would."""
    if env.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").is_file():
        return
    subprocess.run([os.path.join(VENV_BIN, "ray"), "get-auth-token", "--generate"], env=env,
                   capture_output=True, check=True, timeout=60)


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# The GCS's own node table, read with Ray's GCS client (no driver, no dashboard cache in between).
_NODES_PY = """
import sys
from ray._raylet import GcsClient
for node in GcsClient(address=sys.argv[1]).get_all_node_info(timeout=20).values():
    if node.state == 0:  # ALIVE
        print(node.node_id.hex(), node.node_manager_address)
"""


def hostname_resolves_to_loopback() -> bool:
    """True where this machine's hostname resolves to 127.x (default Debian/Ubuntu), the case in which
    gloo, left alone, advertises loopback to the other hosts."""
    try:
        return socket.gethostbyname(socket.gethostname()).startswith("127.")
    except OSError:
        return False
