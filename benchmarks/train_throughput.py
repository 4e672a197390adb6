"""Training throughput: Ray Train with 1 and 2 workers vs a plain single-process torch loop, as ratios.

    .venv/bin/python benchmarks/train_throughput.py            # 6 epochs per run
    .venv/bin/python benchmarks/train_throughput.py --epochs 3 # quicker

Every run trains the demo model (class-conditioned DCGAN, 32x32, z 64, widths 32) on the 1,797
embedded digits with the same per-worker batch (64) and the same GAN step
(:func:`pipeline.train.gan_step`). The plain loop runs in this process with 1 and with 2 torch
threads; each Ray Train worker gets 1 CPU. Steady-state images/s skips the first epoch (warm-up);
"end to end" divides all images by the wall time of ``train()``, Ray Train's fixed start-up,
data loading, per-epoch checkpoints and the export included. Ray itself is started once, before
the timed runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch

from pipeline.families.dcgan.loop import build_models, gan_step, make_optimizers
from pipeline.image.data import digits_arrays, to_float
from pipeline.runtime import ensure_ray
from pipeline.specs import validate_job
from pipeline.train.driver import train
from pipeline.train.worker import epoch_indices

BATCH = 64


def job(root: str, workers: int, epochs: int):
    return validate_job({
        "name": f"bench-{workers}w", "storage": {"root": root},
        "train": {"data": {"source": "digits"},
                  "model": {"image_size": 32, "z_dim": 64, "g_width": 32, "d_width": 32, "conditional": True},
                  "epochs": epochs, "batch_size": BATCH, "seed": 0,
                  "scaling": {"num_workers": workers, "cpus_per_worker": 1},
                  "checkpoint": {"keep": 1, "resume": False}}}, "bench")


def plain_loop(threads: int, epochs: int) -> float:
    """Steady-state images/s of the same GAN step in one process, no Ray, no DDP, no checkpoints."""
    torch.set_num_threads(threads)
    t = job("unused", 1, epochs).train
    images, labels = digits_arrays(32, 1)
    x, y = to_float(torch.from_numpy(images)), torch.from_numpy(labels)
    G, D = build_models(t)
    opt_g, opt_d = make_optimizers(G, D, t)
    noise = torch.Generator().manual_seed(0)
    rates = []
    for epoch in range(epochs):
        idx = epoch_indices(len(x), epoch, 0, 1, t.seed)
        steps = len(idx) // BATCH
        t0 = time.perf_counter()
        for s in range(steps):
            b = idx[s * BATCH:(s + 1) * BATCH]
            gan_step(G, D, opt_g, opt_d, x[b], y[b], torch.randn(BATCH, t.model.z_dim, generator=noise))
        rates.append(steps * BATCH / (time.perf_counter() - t0))
    return statistics.mean(rates[1:] if len(rates) > 1 else rates)


def ray_train(workers: int, epochs: int) -> tuple[float, float, float]:
    """(steady images/s, end-to-end images/s, wall seconds) of `train()` with `workers` workers."""
    with tempfile.TemporaryDirectory(prefix="aigc-bench-") as root:
        t0 = time.perf_counter()
        res = train(job(root, workers, epochs))
        wall = time.perf_counter() - t0
    rates = [h["images/s"] for h in res.history]
    images = sum(h["images/s"] * h["seconds"] for h in res.history)
    return statistics.mean(rates[1:] if len(rates) > 1 else rates), images / wall, wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()

    t0 = time.perf_counter()
    ensure_ray(num_cpus=os.cpu_count())
    print(f"ray start-up: {time.perf_counter() - t0:.1f}s (not in any figure below); {os.cpu_count()} CPUs; "
          f"load average {os.getloadavg()[0]:.1f}")
    plain1 = plain_loop(1, args.epochs)
    plain2 = plain_loop(2, args.epochs)
    print(f"plain loop, 1 thread : {plain1:8,.0f} images/s  (baseline)")
    print(f"plain loop, 2 threads: {plain2:8,.0f} images/s  ({plain2 / plain1:.2f}x)")
    for workers in (1, 2):
        steady, e2e, wall = ray_train(workers, args.epochs)
        print(f"ray train, {workers} worker{'s' if workers > 1 else ' '}: {steady:8,.0f} images/s steady "
              f"({steady / plain1:.2f}x plain-1t, {steady / plain2:.2f}x plain-2t); "
              f"{e2e:,.0f} images/s end to end ({args.epochs} epochs in {wall:.0f}s)")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (figures are only comparable on an otherwise idle "
          "machine)")


if __name__ == "__main__":
    main()
