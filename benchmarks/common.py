"""Shared pieces of the benchmark scripts: the benchmark model, job specs, a peak-RSS sampler."""

from __future__ import annotations

import os
import threading
import time

from pipeline.specs import ModelSpec, validate_job

# The classic 32x32 DCGAN generator (z=100, width 64); speed does not depend on the weights.
MODEL = ModelSpec(image_size=32, channels=1, z_dim=100, g_width=64, d_width=64)


def job_spec(root: str, model_uri: str, n: int, name: str, storage: dict | None = None, shard_size: int = 1000,
             formats: list[str] | None = None):
    return validate_job({
        "name": name,
        "storage": {"root": root, **(storage or {})},
        "generate": {"model": model_uri, "seeds": {"start": 0, "count": n}, "shard_size": shard_size,
                     "output": "{root}/{name}", "formats": formats or ["png", "parquet"],
                     "scaling": {"num_actors": 2, "num_cpus": 0.5, "batch_size": 256}},
    }, "benchmark")


class RssSampler:
    """Peak total RSS of this process and all its descendants: the embedded Ray (GCS, raylet,
    dashboard) and every worker and actor it started. Other Ray clusters on the machine don't count."""

    def __init__(self) -> None:
        self.peak = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    @staticmethod
    def _stat(pid: str) -> tuple[int, int]:
        """(ppid, rss bytes) of a process."""
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[21]) * os.sysconf("SC_PAGE_SIZE")

    def total(self) -> int:
        procs = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                procs[int(pid)] = self._stat(pid)
            except (OSError, IndexError, ValueError):
                pass
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        total, stack = 0, [os.getpid()]
        while stack:
            pid = stack.pop()
            total += procs.get(pid, (0, 0))[1]
            stack += children.get(pid, [])
        return total

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.total())
            time.sleep(0.25)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self.stop.set()
        self.t.join()
