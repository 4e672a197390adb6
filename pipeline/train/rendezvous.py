"""Where torch.distributed listens and connects, without resolving any host name.

* Every worker binds gloo (and NCCL on GPU workers) to the network interface that carries its
  Ray node IP, the address Ray itself uses, unless the user set ``GLOO_SOCKET_IFNAME`` /
  ``NCCL_SOCKET_IFNAME``. Gloo otherwise takes its address from the machine's hostname, which
  default Debian/Ubuntu hosts resolve to 127.0.1.1: every rank would then advertise loopback to
  the other hosts and cross-host training fails ("Gloo connectFullMesh failed ... 127.0.0.1").
* The rendezvous address is rank 0's Ray node IP (Ray's ``get_address_and_port``), never a name.
* Where every node of the cluster is 127.0.0.1, rank 0 hosts the store on a socket bound to
  127.0.0.1 only (torch binds every interface) and gloo uses ``lo``.
"""

from __future__ import annotations

import os
from typing import Any


def _host_loopback_store() -> tuple[str, int]:
    """On rank 0: host torch's rendezvous store on 127.0.0.1 only (torch binds every interface)."""
    import datetime
    import socket

    from torch.distributed import TCPStore

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    store = TCPStore("127.0.0.1", port, is_master=True, master_listen_fd=sock.fileno(), wait_for_workers=False,
                     timeout=datetime.timedelta(seconds=1800))
    globals()["_LOOPBACK_STORE"] = (sock, store)  # lives as long as this worker process
    return "127.0.0.1", port


def _set_env(env: dict[str, str]) -> None:
    os.environ.update(env)


def interface_of(ip: str) -> str | None:
    """The name of the network interface that holds IPv4 address ``ip`` (Linux), or None."""
    import fcntl
    import socket
    import struct

    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name[:15].encode()))
            except OSError:  # no IPv4 address on it
                continue
            if socket.inet_ntoa(packed[20:24]) == ip:
                return name
    return None


def pin_interfaces(ip: str | None = None) -> dict[str, str]:
    """On a worker: set GLOO_SOCKET_IFNAME and NCCL_SOCKET_IFNAME to the interface of its Ray node IP,
    where the user has not set them. Returns what it set."""
    if ip is None:
        import ray

        ip = ray.util.get_node_ip_address()
    name = interface_of(ip)
    chosen = {}
    for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
        if name and not os.environ.get(var):
            os.environ[var] = chosen[var] = name
    return chosen


def torch_config() -> Any:
    """Ray's TorchConfig with every worker's gloo/NCCL pinned to its Ray node's interface; on an
    all-loopback cluster, also a rendezvous that listens on 127.0.0.1 only.

    Ray Train's TorchConfig makes rank 0 host torch's TCPStore, which binds every interface.
    On loopback, rank 0 hosts it on a socket bound to 127.0.0.1 (``master_listen_fd``), every rank
    joins as a client (``TORCHELASTIC_USE_AGENT_STORE``), and gloo uses the loopback device. This
    uses Ray's private ``_TorchBackend``; if that moves, we fall back to the stock config.
    """
    import ray
    from ray.train.torch import TorchConfig

    try:
        from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend
    except ImportError:  # Ray moved its internals: keep the stock (all-interfaces) rendezvous
        return TorchConfig()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    loopback = bool(nodes) and all(n.get("NodeManagerAddress") == "127.0.0.1" for n in nodes)

    class _Backend(_TorchBackend):
        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            worker_group.execute(pin_interfaces)  # before any process group: gloo and NCCL read it then
            resources = worker_group.get_resources_per_worker()
            if not loopback or resources.get("GPU", 0) or resources.get("TPU", 0) \
                    or backend_config.backend not in (None, "gloo"):
                return super().on_start(worker_group, backend_config)
            addr, port = worker_group.execute_single(0, _host_loopback_store)
            worker_group.execute(_set_env, env={"MASTER_ADDR": addr, "MASTER_PORT": str(port),
                                                "TORCHELASTIC_USE_AGENT_STORE": "True", "GLOO_SOCKET_IFNAME": "lo"})
            worker_group.execute(_set_torch_distributed_env_vars)
            ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend="gloo", world_rank=i,
                                                       world_size=len(worker_group), init_method="env://",
                                                       timeout_s=backend_config.timeout_s)
                     for i in range(len(worker_group))])

    class PinnedTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _Backend

    return PinnedTorchConfig()
