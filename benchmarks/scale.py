"""Scale run: 10k → 100k → 1M 32x32 items to local storage, then `aigc verify` on the largest.

    .venv/bin/python benchmarks/scale.py                 # 10k, 100k, 1M (about 20-30 minutes here)
    .venv/bin/python benchmarks/scale.py --sizes 10000 100000

Prints, per size: items/s, seconds, peak RSS (driver + Ray workers), files written, and the time
ratio to the previous size (linear growth = the size ratio). The baseline for each ratio is the
smaller run measured in the same invocation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch
from common import MODEL, RssSampler, job_spec

from pipeline.families.dcgan.model import Generator
from pipeline.generate import run_generate
from pipeline.package import export_package


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--root", default=None, help="where to write (default: a temp dir, removed at the end)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="aigc-scale-"))
    torch.manual_seed(0)
    model_uri = str(root / "model")
    export_package(model_uri, Generator(MODEL), MODEL, {"note": "scale benchmark, untrained"})

    from pipeline.runtime import ensure_ray

    ensure_ray(num_cpus=2)
    prev = None
    last_out, last_n = None, None
    for n in args.sizes:
        out_root = root / f"n{n}"
        with RssSampler() as rss:
            t = time.perf_counter()
            res = run_generate(job_spec(str(out_root), model_uri, n, f"scale{n}", shard_size=2000),
                               date="2026-01-01", progress=False, log=lambda *a: None)
            dt = time.perf_counter() - t
        files = sum(len(f) for _, _, f in os.walk(res.output))
        growth = f"  time x{dt / prev[1]:.2f} for size x{n / prev[0]:.0f}" if prev else ""
        print(f"N={n:>9,}: {n / dt:7,.0f} items/s  {dt:8.1f}s  peak RSS {rss.peak / 2**20:6,.0f} MiB  "
              f"{files:>9,} files  {res.bytes / 2**20:8,.0f} MiB{growth}", flush=True)
        prev = (n, dt)
        if last_out and not args.keep:
            shutil.rmtree(root / f"n{last_n}", ignore_errors=True)  # keep the disk to one size at a time
        last_out, last_n = res.output, n
    t = time.perf_counter()
    v = subprocess.run([sys.executable, "-m", "pipeline", "verify", last_out], capture_output=True, text=True)
    print(f"aigc verify {last_out}: exit {v.returncode} in {time.perf_counter() - t:.0f}s: {v.stdout.strip()[-200:]}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(v.returncode)


if __name__ == "__main__":
    main()
