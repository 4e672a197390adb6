"""The seed article's training loop on a Ray Train worker: BCE on D's probabilities, Adam for G and D.

1. update D: real images → 1, G(z) → 0;
2. update G: D(G(z)) → 1 (the non-saturating loss).

DDP wraps G and D separately; D's gradients from the G update are never all-reduced. Data order,
noise and RNG state follow the shared rules (:mod:`pipeline.train.worker`), so a resumed run
trains exactly what an uninterrupted one does.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from pipeline.families.dcgan.loop import GANProgress
from pipeline.families.mlpgan.model import Discriminator, Generator
from pipeline.image.data import to_float
from pipeline.image.grid import GRID, grid_png
from pipeline.train.checkpoint import load_part, save_parts, set_rng_state
from pipeline.train.worker import (
    PROGRESS_EVERY_S,
    mix,
    no_sync,
    quiet_worker_logs,
    report_epoch,
    restore_optimizer,
    resumed,
    seed_worker,
    start_worker,
    unwrap,
    world_nodes,
    write_samples,
)

PARTS = ("G", "D")


def build_models(t) -> tuple[Generator, Discriminator]:
    """G and D with the same initial weights on every rank, for a given ``train.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        return Generator(t.model), Discriminator(t.model)


def step(G, D, opt_g, opt_d, real: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """One step of the article's loop. Returns [loss_D, loss_G, D(x), D(G(z))]."""
    ones = torch.ones(real.shape[0], device=real.device)
    zeros = torch.zeros_like(ones)
    # 1. update D (one backward over both terms: one all-reduce)
    opt_d.zero_grad(set_to_none=True)
    fake = G(z)
    p_real, p_fake = D(real), D(fake.detach())
    loss_d = F.binary_cross_entropy(p_real, ones) + F.binary_cross_entropy(p_fake, zeros)
    loss_d.backward()
    opt_d.step()
    # 2. update G
    opt_g.zero_grad(set_to_none=True)
    with no_sync(D):
        loss_g = F.binary_cross_entropy(D(fake), ones)
    loss_g.backward()
    opt_g.step()
    return torch.stack([loss_d.detach(), loss_g.detach(), p_real.detach().mean(), p_fake.detach().mean()])


@torch.no_grad()
def sample_grid(G, t, device) -> bytes:
    g = unwrap(G)
    z = torch.randn(GRID * GRID, t.model.z_dim, generator=torch.Generator().manual_seed(mix(t.seed, "grid")))
    return grid_png(g(z.to(device)))


def loop(config: dict) -> None:
    """The loop every Ray Train worker runs (rank 0 also checkpoints, samples and reports progress)."""
    import ray.train
    import ray.train.torch

    w = start_worker(config)
    t = w.cfg.job.train
    stream = w.cfg.data.stream()  # this worker's part of every epoch, from the data cache (pipeline.image.stream)
    quiet_worker_logs()  # Ray Data's logging setup on first use resets what Ray Train configured
    n = stream.count
    steps = stream.steps(w.world, t.batch_size)
    G, D = build_models(t)
    ck, rng = w.resume(PARTS)
    start_epoch, global_step, history, resumed_from = resumed(ck)
    if ck is not None:
        load_part(ck, "G", G)
        load_part(ck, "D", D)
    G = ray.train.torch.prepare_model(G)  # Distributed: two separate DDP wrappers
    D = ray.train.torch.prepare_model(D)
    opt_g = torch.optim.Adam(G.parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2))
    if ck is not None:
        restore_optimizer(ck, "G", opt_g, lr=t.lr_g, betas=(t.beta1, t.beta2))
        restore_optimizer(ck, "D", opt_d, lr=t.lr_d, betas=(t.beta1, t.beta2))
        if rng is not None:
            set_rng_state(*rng)
    else:
        seed_worker(t.seed, w.rank)
    w.progress(GANProgress("start", start_epoch, t.epochs, steps=steps, global_step=global_step,
                           resumed_from=resumed_from, world_size=w.world, nodes=world_nodes(w.world)))
    for epoch in range(start_epoch, t.epochs):
        noise = torch.Generator().manual_seed(mix(t.seed, epoch, w.rank))
        sums = torch.zeros(4, device=w.device)
        t0 = last = time.perf_counter()
        for s, (batch, _) in enumerate(stream.epoch(epoch, w.rank, w.world, t.batch_size, t.seed)):
            real = to_float(batch).to(w.device)
            z = torch.randn(len(batch), t.model.z_dim, generator=noise).to(w.device)
            out = step(G, D, opt_g, opt_d, real, z)
            sums += out
            global_step += 1
            now = time.perf_counter()
            if w.rank == 0 and now - last > PROGRESS_EVERY_S:
                last = now
                w.progress(GANProgress("step", epoch, t.epochs, s + 1, steps, global_step,
                                       {"loss_D": out[0].item(), "loss_G": out[1].item(),
                                        "images/s": (s + 1) * t.batch_size * w.world / (now - t0)}))
        seconds = time.perf_counter() - t0
        if w.world > 1:  # Distributed: the epoch's metrics averaged over the ranks
            torch.distributed.all_reduce(sums)
        m = (sums / (steps * w.world)).tolist()
        metrics = {"epoch": epoch, "global_step": global_step, "loss_D": m[0], "loss_G": m[1], "D(x)": m[2],
                   "D(G(z))": m[3], "images/s": steps * t.batch_size * w.world / seconds, "seconds": seconds}
        history.append(metrics)

        def write(tmp: str, state: dict) -> None:
            save_parts(tmp, {"G": G, "D": D}, {"G": opt_g, "D": opt_d}, state)
            write_samples(w.cfg, tmp, epoch, sample_grid(G, t, w.device), "png")

        report_epoch(w.cfg, epoch, w.rank, metrics, history, write, world_size=w.world, steps_per_epoch=steps,
                     num_examples=n)
        w.progress(GANProgress("epoch", epoch, t.epochs, steps, steps, global_step, metrics))
