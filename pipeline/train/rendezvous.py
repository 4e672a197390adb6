"""torch's rendezvous on loopback: where every node of the cluster is 127.0.0.1, rank 0 hosts the
store on a socket bound to 127.0.0.1 only (torch binds every interface) and gloo uses ``lo``."""

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


def torch_config() -> Any:
    """Ray's TorchConfig; on an all-loopback cluster, one whose rendezvous listens on 127.0.0.1 only.

    Ray Train's TorchConfig makes rank 0 host torch's TCPStore, which binds every interface.
    Here rank 0 hosts it on a socket bound to 127.0.0.1 (``master_listen_fd``), every rank joins
    as a client (``TORCHELASTIC_USE_AGENT_STORE``), and gloo uses the loopback device. This uses
    Ray's private ``_TorchBackend``; if that moves, we fall back to the stock config.
    """
    import ray
    from ray.train.torch import TorchConfig

    try:
        from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend
    except ImportError:  # Ray moved its internals: keep the stock (all-interfaces) rendezvous
        return TorchConfig()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not nodes or any(n.get("NodeManagerAddress") != "127.0.0.1" for n in nodes):
        return TorchConfig()

    class _LoopbackBackend(_TorchBackend):
        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            resources = worker_group.get_resources_per_worker()
            if resources.get("GPU", 0) or resources.get("TPU", 0) or backend_config.backend not in (None, "gloo"):
                return super().on_start(worker_group, backend_config)
            addr, port = worker_group.execute_single(0, _host_loopback_store)
            worker_group.execute(_set_env, env={"MASTER_ADDR": addr, "MASTER_PORT": str(port),
                                                "TORCHELASTIC_USE_AGENT_STORE": "True", "GLOO_SOCKET_IFNAME": "lo"})
            worker_group.execute(_set_torch_distributed_env_vars)
            ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend="gloo", world_rank=i,
                                                       world_size=len(worker_group), init_method="env://",
                                                       timeout_s=backend_config.timeout_s)
                     for i in range(len(worker_group))])

    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _LoopbackBackend

    return LoopbackTorchConfig()
