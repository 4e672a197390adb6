"""Ray start-up for every stage: embedded local Ray on loopback, or an existing cluster.

``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray 2.60 use 127.0.0.1 as the node IP and bind
every Ray socket to loopback (docs/architecture.md, "Ray on a small machine"); it must be in the
environment before Ray starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Callable, Iterator

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Train V2 polls the State API; keep its warnings and Ray Data's banner out of the user's terminal.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def ray_address(address: str | None = None) -> str | None:
    """The cluster to join: --address, else $RAY_ADDRESS, else None (embedded)."""
    return address or os.environ.get("RAY_ADDRESS") or None


def ensure_ray(address: str | None = None, num_cpus: int | None = None,
               object_store_memory: int | None = None, dashboard: bool = True) -> bool:
    """Connect to ``address`` or start an embedded local Ray. Returns True if this call started it.

    ``dashboard=False`` starts an embedded Ray without its dashboard (2 s less start-up here, and no
    dashboard processes during the run): for stages without Ray Train, whose V2 controller polls the
    dashboard's State API. A Ray already running, or one at ``address``, is used as it is.
    """
    import ray

    from pipeline import terminal

    if ray.is_initialized():
        return False
    addr = ray_address(address)
    # Inside `aigc`'s ray_to_log (pipeline/terminal.py) everything Ray prints goes to the run's log
    # file, so keep its INFO lines there; otherwise only its warnings reach the user's stderr.
    logged = terminal.log_file() is not None
    common = dict(logging_level=logging.INFO if logged or terminal.verbose else logging.WARNING, configure_logging=True,
                  log_to_driver=True, ignore_reinit_error=True)
    if addr:
        ray.init(address=addr, **common)
    else:
        # address="local" always starts a fresh local cluster, never joins a `ray start` one by accident.
        ray.init(address="local", num_cpus=num_cpus,
                 object_store_memory=object_store_memory or 1_000_000_000,
                 include_dashboard=dashboard, dashboard_host="127.0.0.1", **common)
    terminal.ray_started = True
    if logged:
        _forward_worker_output_to_stderr()
    quiet_ray_data()
    return True


def _forward_worker_output_to_stderr() -> None:
    """Ray prints what its workers write to stdout on the driver's stdout, the rest on sys.stderr;
    while sys.stderr is the run's log file both go there (our stdout stays the user's)."""
    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs",
                           lambda data: ray_worker.print_to_stdstream({**data, "is_err": True}, ignore_prefix=False))


def quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False


@contextlib.contextmanager
def watch_nodes(stage: str, then: str, log: Callable[[str], None] | None = None,
                every_s: float = 2.0) -> Iterator[None]:
    """While the block runs, say in one line each time a Ray node of the cluster dies (a lost host, a cut
    link): which node, how many are left and ``then``, what the stage does about it. The run itself goes
    on; Ray retries the lost work. Polls the GCS's node table every ``every_s`` seconds."""
    import ray

    if log is None:
        from pipeline.terminal import say as log

    def alive() -> dict[str, str]:
        return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}

    try:
        seen = alive()
    except Exception:  # noqa: BLE001 - no node table to watch: run the stage unwatched
        yield
        return
    stop = threading.Event()

    def watch() -> None:
        known = dict(seen)
        while not stop.wait(every_s):
            try:
                now = alive()
            except Exception:  # noqa: BLE001 - the GCS is busy or gone; the stage reports its own failure
                continue
            for node_id, ip in known.items():
                if node_id not in now:
                    log(f"warning: {stage}: lost Ray node {ip} ({len(now)} of {len(known)} nodes left); {then}")
            known.update(now)
            for node_id in [k for k in known if k not in now]:
                del known[node_id]

    t = threading.Thread(target=watch, name=f"aigc-{stage}-nodes", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(timeout=every_s + 5)
