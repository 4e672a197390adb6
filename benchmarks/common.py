"""Shared pieces of the benchmark scripts: the benchmark model, job specs, a peak-RSS sampler."""

from __future__ import annotations

import os
import threading
import time

from pipeline.specs import ModelSpec, validate_job

# The classic 32x32 DCGAN generator (z=100, width 64); speed does not depend on the weights.
MODEL = ModelSpec(image_size=32, channels=1, z_dim=100, g_width=64, d_width=64)


def job_spec(root: str, model_uri: str, n: int, name: str, storage: dict | None = None, shard_size: int = 1000):
    return validate_job({
        "name": name,
        "storage": {"root": root, **(storage or {})},
        "generate": {"model": model_uri, "seeds": {"start": 0, "count": n}, "shard_size": shard_size,
                     "output": "{root}/{name}", "formats": ["png", "parquet"],
                     "scaling": {"num_actors": 2, "num_cpus": 0.5, "batch_size": 256}},
    }, "benchmark")


class RssSampler:
    """Peak total RSS of this process and every Ray worker/actor process on the machine's session."""

    def __init__(self) -> None:
        self.peak = 0
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    @staticmethod
    def rss(pid: str) -> int:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def total(self) -> int:
        total = self.rss(str(os.getpid()))
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ")
                if cmd.startswith(b"ray::") or b"default_worker.py" in cmd:
                    total += self.rss(pid)
            except OSError:
                pass
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


