"""The VAE's training loop on a Ray Train worker: the (β-weighted, warmed-up) negative ELBO per dimension.

Every ``heldout_period``-th example in key order is never trained on: the evaluation measures the
ELBO on those (:func:`heldout_mask`). The posterior noise of (epoch, rank) comes from its own
generator, the data order from the shared per-epoch permutation, so a resumed run trains exactly
what an uninterrupted one does. One checkpoint part, ``VAE``, with its Adam state.
"""

from __future__ import annotations

import time

import torch

from pipeline.families.vae.model import VAE, bits_per_dim, kl_weight
from pipeline.image.data import to_float
from pipeline.image.grid import GRID, grid_png
from pipeline.train.checkpoint import load_part, save_parts, set_rng_state
from pipeline.train.worker import (
    PROGRESS_EVERY_S,
    Progress,
    mix,
    report_epoch,
    restore_optimizer,
    resumed,
    seed_worker,
    start_worker,
    unwrap,
    world_nodes,
    write_samples,
)

PART = "VAE"


class VAEProgress(Progress):
    def metrics_line(self) -> str:
        m = self.metrics
        figures = (f"loss {m.get('loss', float('nan')):.4f}/dim  KL {m.get('kl', float('nan')):.2f} nats  "
                   f"{m.get('bits/dim', float('nan')):.3f} bits/dim")
        if self.kind == "step":
            return f"epoch {self.epoch + 1}/{self.epochs}  step {self.step}/{self.steps}  {figures}"
        return (f"epoch {self.epoch + 1}/{self.epochs} done  {figures}  {m.get('images/s', 0):,.0f} images/s  "
                f"(step {self.global_step})")


def heldout_period(heldout: float) -> int | None:
    """Every k-th example (in source order) is held out, k = round(1 / heldout); None when nothing is."""
    return max(2, round(1.0 / heldout)) if heldout > 0 else None


def heldout_mask(n: int, heldout: float) -> torch.Tensor:
    """True for the examples (in source order) that training never sees: every k-th, k = round(1 / heldout)."""
    period = heldout_period(heldout)
    if period is None:
        return torch.zeros(n, dtype=torch.bool)
    return torch.arange(n) % period == period - 1


def build_vae(t) -> VAE:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        return VAE(t.model)


@torch.no_grad()
def sample_grid(model, t, device) -> bytes:
    m = unwrap(model)
    was = m.training
    m.eval()
    z = torch.randn(GRID * GRID, t.model.z_dim, generator=torch.Generator().manual_seed(mix(t.seed, "grid")))
    labels = (torch.arange(GRID * GRID) % t.model.num_classes).to(device) if t.model.conditional else None
    out = m(z.to(device), labels)
    m.train(was)
    return grid_png(out)


def loop(config: dict) -> None:
    """The loop every Ray Train worker runs (rank 0 also checkpoints, samples and reports progress)."""
    import ray.train
    import ray.train.torch

    w = start_worker(config)
    t = w.cfg.job.train
    cfg = t.model
    # this worker's part of every epoch, from the data cache (pipeline.image.stream), without the held-out rows
    stream = w.cfg.data.stream(skip_every=heldout_period(cfg.heldout))
    n = stream.count
    steps = stream.steps(w.world, t.batch_size)
    dims = cfg.channels * cfg.image_size * cfg.image_size
    model = build_vae(t)
    ck, rng = w.resume((PART,))
    start_epoch, global_step, history, resumed_from = resumed(ck)
    if ck is not None:
        load_part(ck, PART, model)
    model = ray.train.torch.prepare_model(model)  # Distributed: DDP all-reduces the gradients
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if ck is not None:
        restore_optimizer(ck, PART, opt, lr=cfg.lr)
        if rng is not None:
            set_rng_state(*rng)
    else:
        seed_worker(t.seed, w.rank)
    w.progress(VAEProgress("start", start_epoch, t.epochs, steps=steps, global_step=global_step,
                           resumed_from=resumed_from, world_size=w.world, nodes=world_nodes(w.world)))
    for epoch in range(start_epoch, t.epochs):
        noise = torch.Generator().manual_seed(mix(t.seed, epoch, w.rank))
        sums = torch.zeros(3, dtype=torch.float64, device=w.device)  # nll, kl, loss (per image, nats)
        t0 = last = time.perf_counter()
        for s, (batch, batch_labels) in enumerate(stream.epoch(epoch, w.rank, w.world, t.batch_size, t.seed)):
            x = to_float(batch).to(w.device)
            y = batch_labels.to(w.device) if cfg.conditional else None
            eps = torch.randn(len(batch), cfg.z_dim, generator=noise).to(w.device)
            # 1. the negative ELBO with the warmed-up KL weight, per dimension
            nll, kl = model(eps, y, x=x)
            beta = kl_weight(cfg, global_step)
            loss = (nll + beta * kl).mean() / dims
            # 2. step (DDP averages the gradients over the ranks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([nll.detach().mean(), kl.detach().mean(), loss.detach() * dims]).double()
            global_step += 1
            now = time.perf_counter()
            if w.rank == 0 and now - last > PROGRESS_EVERY_S:
                last = now
                w.progress(VAEProgress("step", epoch, t.epochs, s + 1, steps, global_step,
                                       {"loss": loss.item(), "kl": kl.mean().item(),
                                        "bits/dim": bits_per_dim((nll + kl).mean().item(), dims)}))
        seconds = time.perf_counter() - t0
        if w.world > 1:  # Distributed: the epoch's metrics averaged over the ranks
            torch.distributed.all_reduce(sums)
        nll_m, kl_m, loss_m = (sums / (steps * w.world)).tolist()
        metrics = {"epoch": epoch, "global_step": global_step, "loss": loss_m / dims, "nll": nll_m, "kl": kl_m,
                   "beta": kl_weight(cfg, global_step - 1), "bits/dim": bits_per_dim(nll_m + kl_m, dims),
                   "images/s": steps * t.batch_size * w.world / seconds, "seconds": seconds}
        history.append(metrics)

        def write(tmp: str, state: dict) -> None:
            save_parts(tmp, {PART: model}, {PART: opt}, state)
            write_samples(w.cfg, tmp, epoch, sample_grid(model, t, w.device), "png")

        report_epoch(w.cfg, epoch, w.rank, metrics, history, write, world_size=w.world, steps_per_epoch=steps,
                     num_examples=n)
        w.progress(VAEProgress("epoch", epoch, t.epochs, steps, steps, global_step, metrics))
