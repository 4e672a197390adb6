"""Training throughput: Ray Train with 1 and 2 workers vs plain PyTorch (one process, and DDP), as ratios.

    .venv/bin/python benchmarks/train_throughput.py            # 6 epochs per run
    .venv/bin/python benchmarks/train_throughput.py --epochs 3 # quicker

Every run trains the demo model (class-conditioned DCGAN, 32x32, z 64, widths 32) on the 1,797
embedded digits with the same per-worker batch (64) and the same GAN step
(:func:`pipeline.families.dcgan.loop.gan_step`). The plain loop runs in this process with 1 and
with 2 torch threads; **plain DDP** is the fair baseline of Ray Train's overhead: 2 processes
(``torch.multiprocessing``, gloo on 127.0.0.1, 1 thread each), G and D each in DDP, the same data
order (``epoch_indices``), model, batch and step. Each Ray Train worker gets 1 CPU. Steady-state
images/s skips the first epoch (warm-up); "end to end" divides all images by the wall time of
``train()``. Ray Train's fixed cost is split from its live progress events: the driver's data
load, worker start + rendezvous + the workers' read of the data (until the first epoch starts),
the mean checkpoint + report between epochs, and the end (fit teardown and the export).
Ray itself is started once, before the timed runs.
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
from pipeline.train.worker import epoch_indices, steps_per_epoch

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


def _ddp_rank(rank: int, world: int, port: int, epochs: int, out) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    t = job("unused", world, epochs).train
    images, labels = digits_arrays(32, 1)
    x, y = to_float(torch.from_numpy(images)), torch.from_numpy(labels)
    G, D = build_models(t)
    G, D = torch.nn.parallel.DistributedDataParallel(G), torch.nn.parallel.DistributedDataParallel(D)
    opt_g, opt_d = make_optimizers(G, D, t)
    noise = torch.Generator().manual_seed(rank)
    rates = []
    for epoch in range(epochs):
        idx = epoch_indices(len(x), epoch, rank, world, t.seed)
        steps = steps_per_epoch(len(x), world, BATCH)
        dist.barrier()
        t0 = time.perf_counter()
        for s in range(steps):
            b = idx[s * BATCH:(s + 1) * BATCH]
            gan_step(G, D, opt_g, opt_d, x[b], y[b], torch.randn(len(b), t.model.z_dim, generator=noise))
        dist.barrier()
        rates.append(steps * BATCH * world / (time.perf_counter() - t0))
    if rank == 0:
        out.put(statistics.mean(rates[1:] if len(rates) > 1 else rates))
    dist.destroy_process_group()


def plain_ddp(world: int, epochs: int) -> float:
    """Steady-state images/s (all ranks) of plain PyTorch DDP: ``world`` processes, gloo, 1 thread each."""
    import torch.multiprocessing as mp

    from pipeline.localcluster import free_port

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_ddp_rank, args=(r, world, port, epochs, out)) for r in range(world)]
    for p in procs:
        p.start()
    rate = out.get(timeout=1800)
    for p in procs:
        p.join()
    return rate


def ray_train(workers: int, epochs: int) -> tuple[float, float, float, dict]:
    """(steady images/s, end-to-end images/s, wall seconds, fixed-cost split) of `train()` with `workers` workers."""
    from pipeline.catalog.registry import implementation

    with tempfile.TemporaryDirectory(prefix="aigc-bench-") as root:
        spec = job(root, workers, epochs)
        t = time.perf_counter()
        implementation(spec.train.model).load_data(spec)  # what the driver does first, timed alone
        data_s = time.perf_counter() - t
        events: list[tuple[float, object]] = []
        t0 = time.perf_counter()
        res = train(spec, on_progress=lambda e: events.append((time.perf_counter(), e)))
        end = time.perf_counter()
    wall = end - t0
    rates = [h["images/s"] for h in res.history]
    images = sum(h["images/s"] * h["seconds"] for h in res.history)
    start = next(ts for ts, e in events if e.kind == "start")
    ends = [ts for ts, e in events if e.kind == "epoch"]
    gaps = [b - a - h["seconds"] for a, b, h in zip(ends, ends[1:], res.history[1:])]
    split = {"data (driver)": data_s, "worker start + rendezvous + shard read": start - t0 - data_s,
             "checkpoint + report per epoch": statistics.mean(gaps) if gaps else float("nan"),
             "teardown + export": end - ends[-1]}
    return statistics.mean(rates[1:] if len(rates) > 1 else rates), images / wall, wall, split


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
    ddp = plain_ddp(2, args.epochs)
    print(f"plain DDP, 2 processes x 1 thread: {ddp:8,.0f} images/s  ({ddp / plain1:.2f}x plain-1t)")
    for workers in (1, 2):
        steady, e2e, wall, split = ray_train(workers, args.epochs)
        print(f"ray train, {workers} worker{'s' if workers > 1 else ' '}: {steady:8,.0f} images/s steady "
              f"({steady / plain1:.2f}x plain-1t, {steady / plain2:.2f}x plain-2t"
              + (f", {steady / ddp:.2f}x plain DDP (target >= 0.95x)" if workers == 2 else "") + "); "
              f"{e2e:,.0f} images/s end to end ({args.epochs} epochs in {wall:.0f}s)")
        print("    fixed cost: " + ", ".join(f"{k} {v:.1f}s" for k, v in split.items()))
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (figures are only comparable on an otherwise idle "
          "machine)")


if __name__ == "__main__":
    main()
