"""The tiny-gan implementation: network, training loop and export (the image modality does the rest)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.image.data import to_float
from pipeline.image.family import ImageFamily
from pipeline.train.checkpoint import load_part, save_parts, set_rng_state
from pipeline.train.worker import (
    Progress,
    mix,
    no_sync,
    report_epoch,
    restore_optimizer,
    seed_worker,
    start_worker,
)


class Generator(nn.Module):
    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg
        self.net = nn.Sequential(nn.Linear(cfg.z_dim, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 28 * 28), nn.Tanh())

    def forward(self, z: torch.Tensor, labels: Any = None, cond: Any = None) -> torch.Tensor:
        return self.net(z).view(-1, 1, 28, 28)


class Discriminator(nn.Module):
    def __init__(self, cfg: Any):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(28 * 28, cfg.hidden), nn.LeakyReLU(0.2), nn.Linear(cfg.hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).squeeze(1)


def loop(config: dict) -> None:
    """Every Ray Train worker runs this: the pipeline's helpers give data order, resume and checkpoints."""
    import ray.train
    import ray.train.torch

    w = start_worker(config)
    t = w.cfg.job.train
    stream = w.cfg.data.stream()  # this worker's part of every epoch, streamed from the data cache
    steps = stream.steps(w.world, t.batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        G, D = Generator(t.model), Discriminator(t.model)
    start, step_count, history = 0, 0, []
    ck, rng = w.resume(("G", "D"))
    if ck is not None:
        load_part(ck, "G", G)
        load_part(ck, "D", D)
        start, step_count, history = ck.epoch + 1, int(ck.state["global_step"]), list(ck.state["history"])
    G, D = ray.train.torch.prepare_model(G), ray.train.torch.prepare_model(D)
    opt_g = torch.optim.Adam(G.parameters(), lr=t.lr_g, betas=(t.beta1, t.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2))
    if ck is not None:
        restore_optimizer(ck, "G", opt_g)
        restore_optimizer(ck, "D", opt_d)
        if rng is not None:
            set_rng_state(*rng)
    else:
        seed_worker(t.seed, w.rank)
    w.progress(Progress("start", start, t.epochs, steps=steps, world_size=w.world))
    for epoch in range(start, t.epochs):
        noise = torch.Generator().manual_seed(mix(t.seed, epoch, w.rank))
        total = torch.zeros(2)
        for batch, _ in stream.epoch(epoch, w.rank, w.world, t.batch_size, t.seed):
            real = to_float(batch)
            fake = G(torch.randn(len(real), t.model.z_dim, generator=noise))
            ones, zeros = torch.ones(len(real)), torch.zeros(len(real))
            # 1. update D
            opt_d.zero_grad(set_to_none=True)
            loss_d = F.binary_cross_entropy_with_logits(D(real), ones) + \
                F.binary_cross_entropy_with_logits(D(fake.detach()), zeros)
            loss_d.backward()
            opt_d.step()
            # 2. update G (D's gradients from this step are never all-reduced)
            opt_g.zero_grad(set_to_none=True)
            with no_sync(D):
                loss_g = F.binary_cross_entropy_with_logits(D(fake), ones)
            loss_g.backward()
            opt_g.step()
            total += torch.stack([loss_d.detach(), loss_g.detach()])
            step_count += 1
        metrics = {"epoch": epoch, "global_step": step_count, "loss_D": float(total[0]) / steps,
                   "loss_G": float(total[1]) / steps}
        history.append(metrics)

        def write(tmp: str, state: dict) -> None:
            save_parts(tmp, {"G": G, "D": D}, {"G": opt_g, "D": opt_d}, state)

        report_epoch(w.cfg, epoch, w.rank, metrics, history, write, world_size=w.world)
        w.progress(Progress("epoch", epoch, t.epochs, steps, steps, step_count, metrics))


class TinyGAN(ImageFamily):
    parts = ("G", "D")
    loop = staticmethod(loop)

    def build(self, config: Any) -> Generator:
        return Generator(config)

    def export(self, job: Any, ck: Any, data: Any) -> tuple[Any, Any, dict]:
        G = Generator(job.train.model)
        load_part(ck, "G", G)
        return G, job.train.model, {"plugin": "aigc-family-example"}

    def describe(self, history: list[dict], data: dict) -> str:
        last = history[-1] if history else {}
        return (f"{len(history)} epochs, loss_D {last.get('loss_D', float('nan')):.3f}, "
                f"loss_G {last.get('loss_G', float('nan')):.3f}")
