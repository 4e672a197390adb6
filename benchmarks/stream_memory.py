"""Streaming training data: peak memory and training images/s at 60k, 600k and 1.2M images, as ratios.

    .venv/bin/python benchmarks/stream_memory.py                      # 60k, 600k, 1.2M (about 20 min here)
    .venv/bin/python benchmarks/stream_memory.py --sizes 6000 60000   # quicker

The benchmark writes its own source once: 1.2M 32x32 grey PNGs (the embedded digits, each shifted by
up to 3 pixels and lightly noised, so no two are alike) as Parquet in the Hugging Face layout
(``image`` {bytes, path}, ``label``), 12 files of 100,000 rows, in ``--workdir``. Each size N is then
one ``aigc train`` of the first N rows (``train.data.limit``): a small class-conditioned DCGAN (widths
8, batch 256 per worker), 2 Ray Train workers, so the data path weighs as much as it can; each size
trains on about ``--images`` images (600,000: 10 epochs of 60k, one of 600k or 1.2M), and images/s
leaves out the first epoch when there is more than one.

It prints, per size: the driver's peak RSS (the ``aigc train`` process's own VmHWM), the
largest training worker's peak RSS (``usage.peak_rss_mb`` in the last checkpoint's state.json:
each worker's ``ru_maxrss``, max over the ranks), the training images/s of the epoch (the loop's
own figure: every rank's steps x batch over the epoch's wall time), and the time to build the data
cache (decode + write; a rerun reuses it). The baseline is the smallest size, measured in the
same run: the targets are worker peak RSS at 1.2M <= 1.2x the peak at 60k, and images/s within
10 % across the sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
FILE_ROWS = 100_000


def write_source(folder: Path, total: int) -> None:
    """``total`` distinct 32x32 grey PNGs as Parquet (once; kept between runs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline.image.data import digits_arrays

    done = folder / "_complete.json"
    if done.exists() and json.loads(done.read_text()).get("total") == total:
        return
    folder.mkdir(parents=True, exist_ok=True)
    base, labels = digits_arrays(32, 1)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for start in range(0, total, FILE_ROWS):
        n = min(FILE_ROWS, total - start)
        idx = (start + np.arange(n)) % len(base)
        shifts = rng.integers(-3, 4, (n, 2))
        noise = rng.integers(0, 24, (n, 32, 32))
        cells, ys = [], []
        for i in range(n):
            img = np.roll(base[idx[i], 0], tuple(shifts[i]), axis=(0, 1)).astype(np.int32)
            img = np.clip(img + noise[i], 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(img, "L").save(buf, format="PNG")
            cells.append({"bytes": buf.getvalue(), "path": f"{start + i:07d}.png"})
            ys.append(int(labels[idx[i]]))
        table = pa.table({"image": pa.array(cells, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                          "label": pa.array(ys, pa.int64())})
        pq.write_table(table, folder / f"part-{start // FILE_ROWS:03d}.parquet", row_group_size=2048)
        print(f"  source: {start + n:,}/{total:,} images written ({time.perf_counter() - t0:.0f} s)", flush=True)
    done.write_text(json.dumps({"total": total}))


def run_size(workdir: Path, source: Path, n: int, total: int, images: int) -> dict:
    epochs = max(1, -(-images // n))  # every size trains on about as many images: a short epoch's start weighs less
    root = workdir / f"out-{n}"
    job = {"name": f"stream-{n}", "storage": {"root": str(root)},
           "train": {"data": {"source": "parquet", "uri": str(source), **({"limit": n} if n < total else {})},
                     "model": {"image_size": 32, "z_dim": 16, "g_width": 8, "d_width": 8, "conditional": True},
                     "epochs": epochs, "batch_size": 256, "seed": 0, "scaling": {"num_workers": 2},
                     "checkpoint": {"keep": 1, "resume": False}}}
    for old in ("models", "checkpoints", "runs"):  # a fresh run each time; the data cache (root/cache) is kept
        shutil.rmtree(root / old, ignore_errors=True)
    path = workdir / f"stream-{n}.yaml"
    path.write_text(yaml.safe_dump(job))
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("aigc")), "train", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def watch() -> None:  # the driver's own high-water mark (VmHWM), not its children's (Ray's processes)
        while proc.poll() is None:
            with contextlib.suppress(OSError, ValueError, StopIteration):
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak[0] = max(peak[0], int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1]))
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out = proc.stdout.read() if proc.stdout else ""
    proc.wait()
    watcher.join()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"aigc train failed for N={n}:\n{out[-3000:]}")
    meta = json.loads(next((root / "models" / f"stream-{n}").glob("*/model.json")).read_text())
    history = meta["metrics"]
    steady = history[1:] if len(history) > 1 else history  # the first epoch warms up (allocations, first window)
    cache_s = meta["data"].get("cache_built_s") or float("nan")
    state = json.loads(Path(meta["checkpoint"], "state.json").read_text())  # the workers' usage, all ranks
    return {"n": n, "driver_rss_mb": peak[0] / 1024, "worker_rss_mb": state["usage"]["peak_rss_mb"],
            "images_s": sum(h["images/s"] * h["seconds"] for h in steady) / sum(h["seconds"] for h in steady),
            "epoch_s": history[-1]["seconds"], "epochs": len(history), "wall_s": wall, "cache_s": cache_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[60_000, 600_000, 1_200_000])
    ap.add_argument("--images", type=int, default=600_000, help="images each size trains on (epochs = this / size, "
                                                                "at least 1); images/s leaves out the first epoch")
    ap.add_argument("--workdir", default="/tmp/aigc-bench-stream")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    total = max(args.sizes)
    source = workdir / f"source-{total}"
    write_source(source, total)
    rows = []
    for n in sorted(args.sizes):
        print(f"training on {n:,} images ...", flush=True)
        rows.append(run_size(workdir, source, n, total, args.images))
        r = rows[-1]
        print(f"  worker peak RSS {r['worker_rss_mb']:,.0f} MiB, driver {r['driver_rss_mb']:,.0f} MiB, "
              f"{r['images_s']:,.0f} images/s, {r['epochs']} epoch(s) of {r['epoch_s']:,.0f} s, "
              f"wall {r['wall_s']:,.0f} s", flush=True)
    base = rows[0]
    print(f"\n{'images':>10} {'worker peak RSS':>16} {'x':>6} {'driver peak RSS':>16} {'x':>6} {'images/s':>9} "
          f"{'x':>6} {'cache build':>12}")
    for r in rows:
        print(f"{r['n']:>10,} {r['worker_rss_mb']:>12,.0f} MiB {r['worker_rss_mb'] / base['worker_rss_mb']:>5.2f}x "
              f"{r['driver_rss_mb']:>12,.0f} MiB {r['driver_rss_mb'] / base['driver_rss_mb']:>5.2f}x "
              f"{r['images_s']:>9,.0f} {r['images_s'] / base['images_s']:>5.2f}x {r['cache_s']:>10,.0f} s")
    big = rows[-1]
    rss_ok = big["worker_rss_mb"] <= 1.2 * base["worker_rss_mb"]
    spread = max(r["images_s"] for r in rows) / min(r["images_s"] for r in rows) - 1
    print(f"\nworker peak RSS at {big['n']:,}: {big['worker_rss_mb'] / base['worker_rss_mb']:.2f}x the peak at "
          f"{base['n']:,} (target <= 1.20x: {'met' if rss_ok else 'MISSED'}); images/s spread {spread:.1%} "
          f"(target <= 10%: {'met' if spread <= 0.10 else 'MISSED'})")


if __name__ == "__main__":
    main()
