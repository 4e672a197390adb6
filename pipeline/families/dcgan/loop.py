"""The DCGAN's training loop on a Ray Train worker, and the GAN step.

* Data: every worker streams its part of each epoch from the data cache, in an order seeded by
  (seed, epoch, rank) (:mod:`pipeline.image.stream`), so a resume reproduces the run exactly and a
  worker's memory does not grow with the data.
* Models: G and D are wrapped in DDP separately (two ``prepare_model`` calls), each with its own
  Adam optimizer. D's gradients from the G update are never all-reduced (``no_sync``).
* Randomness: init from ``train.seed``; the noise (and ``train.augment``'s draws) of (epoch,
  rank) from its own generator. So a run that resumes at epoch k trains exactly what an
  uninterrupted run trains from epoch k.
* R1 (``train.r1``): D's loss adds γ/2·|∇ₓD(x)|² on the real images it saw, every
  ``train.r1_every``-th global step (weighted by that interval); the input gradient is a second
  backward through D, and D's parameter gradients are still all-reduced once per step.
* Averaged G (``train.ema``): every rank keeps a moving average of G's weights, updated after
  each step; its BN statistics are recomputed from seeded samples at every checkpoint. It is
  what the sample grids show and what the model package exports.
* Checkpoint parts: ``G``, ``D`` (with Adam states) and ``G_ema``.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.catalog.dcgan import caption_classes
from pipeline.errors import PipelineError
from pipeline.families.dcgan.model import Discriminator, Generator
from pipeline.image.data import to_float
from pipeline.image.grid import GRID, grid_png
from pipeline.models.diffaugment import diff_augment
from pipeline.models.ema import ema_update, recalibrate_bn
from pipeline.models.text_encoder import Features, caption, featurize, phrasing
from pipeline.specs.schema import TrainSpec
from pipeline.train.checkpoint import OPTIM_FILE, LoadedCheckpoint, load_part, save_parts, set_rng_state
from pipeline.train.worker import (
    PROGRESS_EVERY_S,
    Progress,
    mix,
    no_sync,
    report_epoch,
    resumed,
    seed_worker,
    start_worker,
    unwrap,
    world_nodes,
    write_samples,
)

EMA_PART = "G_ema"  # models.safetensors: the moving average of G's weights (train.ema)
PARTS = ("G", "D")






class GANProgress(Progress):
    """A progress event of the GAN loops: losses, D's outputs and images/s."""

    def metrics_line(self) -> str:
        m = self.metrics
        losses = f"loss_D {m.get('loss_D', float('nan')):.3f}  loss_G {m.get('loss_G', float('nan')):.3f}"
        if self.kind == "step":
            return (f"epoch {self.epoch + 1}/{self.epochs}  step {self.step}/{self.steps}  {losses}  "
                    f"{m.get('images/s', 0):,.0f} images/s")
        return (f"epoch {self.epoch + 1}/{self.epochs} done  {losses}  D(x) {m.get('D(x)', 0):.3f}  "
                f"D(G(z)) {m.get('D(G(z))', 0):.3f}  {m.get('images/s', 0):,.0f} images/s  (step {self.global_step})")


def make_optimizers(G: nn.Module, D: nn.Module, t: TrainSpec) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for G and D; a text encoder inside G gets its own learning rate (its own param group)."""
    text = getattr(unwrap(G), "text", None)
    if text is None:
        groups: Any = G.parameters()
    else:
        ids = {id(p) for p in text.parameters()}
        groups = [{"params": [p for p in G.parameters() if id(p) not in ids]},
                  {"params": list(text.parameters()), "lr": t.model.text_encoder.lr}]
    return (torch.optim.Adam(groups, lr=t.lr_g, betas=(t.beta1, t.beta2)),
            torch.optim.Adam(D.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2)))


def build_models(t: TrainSpec) -> tuple[nn.Module, nn.Module]:
    """G and D with the same initial weights on every rank, for a given ``train.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        return Generator(t.model), Discriminator(t.model)


def build_ema(t: TrainSpec, G: nn.Module, ck: LoadedCheckpoint | None = None,
              device: torch.device | None = None) -> nn.Module | None:
    """The moving average of G's weights (``train.ema``): the checkpoint's, else a copy of G; None when off.

    Call it after G is restored and before G is wrapped in DDP. Every rank keeps one (all
    update it alike); rank 0 checkpoints it.
    """
    if not t.ema:
        return None
    avg = copy.deepcopy(unwrap(G))
    if ck is not None and ck.part(EMA_PART):
        load_part(ck, EMA_PART, avg)
    return avg.to(device).eval() if device is not None else avg.eval()  # only ema_update moves its parameters


def ema_bn(G_ema: nn.Module, t: TrainSpec) -> nn.Module:
    """Recompute the averaged G's batch-norm statistics (seeded: a function of its weights alone)."""
    return recalibrate_bn(G_ema, torch.Generator().manual_seed(mix(t.seed, "ema-bn")))


def r1_weight(t: TrainSpec, global_step: int) -> float:
    """The R1 weight of the step after ``global_step`` steps: lazy, ``r1 * r1_every`` every ``r1_every`` steps."""
    return t.r1 * t.r1_every if t.r1 and global_step % t.r1_every == 0 else 0.0


def augmenter(t: TrainSpec, epoch: int, rank: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``train.augment`` as one function for this epoch and rank; its draws come from its own generator."""
    if not t.augment:
        return None
    gen = torch.Generator().manual_seed(mix(t.seed, "augment", epoch, rank))
    return lambda x: diff_augment(x, t.augment, gen)


def gan_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
             real: torch.Tensor, labels: torch.Tensor | None, z: torch.Tensor,
             autocast: Any = None, scaler: Any = None, text: Features | None = None,
             augment: Callable[[torch.Tensor], torch.Tensor] | None = None, r1: float = 0.0) -> torch.Tensor:
    """One DCGAN step (non-saturating loss). Returns [loss_D, loss_G, D(x), D(G(z)), loss_text] as a tensor.

    With ``text`` (featurized captions of ``labels``), G's text encoder also learns to classify the
    captions: its cross-entropy joins G's loss (the encoder's own parameters get only that gradient).
    With ``augment`` (DiffAugment), D sees every real and generated batch through it, G's
    gradients flowing back through it. With ``r1`` > 0, D's loss also gets the R1 penalty
    ``r1 / 2 * |grad_x D(x)|^2`` on the real images it saw (reported loss_D leaves it out).
    """
    autocast = autocast or contextlib.nullcontext
    aug = augment or (lambda x: x)
    ones = torch.ones(real.shape[0], device=real.device)
    zeros = torch.zeros_like(ones)

    # 1. update D: real images → 1, generated → 0 (two forwards, one backward: one all-reduce)
    opt_d.zero_grad(set_to_none=True)
    with autocast():
        if text is not None:
            fake, loss_text = G(z, labels, text=text, text_targets=labels)
        else:
            fake, loss_text = G(z, labels), torch.zeros((), device=real.device)
        seen = aug(real)
        if r1:
            seen = seen.detach().requires_grad_(True)
        logit_real = D(seen, labels)
        logit_fake = D(aug(fake.detach()), labels)
        loss_d = (F.binary_cross_entropy_with_logits(logit_real.float(), ones)
                  + F.binary_cross_entropy_with_logits(logit_fake.float(), zeros))
    penalty = torch.zeros((), device=real.device)
    if r1:  # a gradient w.r.t. the input only: D's parameter gradients still sync once, below
        # fp16: differentiate the scaled sum and unscale, so small input gradients do not flush to
        # zero (torch.amp's gradient-penalty recipe); a disabled or absent scaler scales by 1
        out = logit_real.float().sum()
        grad, = torch.autograd.grad(scaler.scale(out) if scaler is not None else out, seen, create_graph=True)
        if scaler is not None:
            grad = grad / scaler.get_scale()
        penalty = r1 / 2 * grad.float().pow(2).flatten(1).sum(1).mean()
    if scaler is not None:
        scaler.scale(loss_d + penalty).backward()
        scaler.step(opt_d)
    else:
        (loss_d + penalty).backward()
        opt_d.step()

    # 2. update G: make D call G(z) real
    opt_g.zero_grad(set_to_none=True)
    with no_sync(D), autocast():
        loss_g = F.binary_cross_entropy_with_logits(D(aug(fake), labels).float(), ones)
        if text is not None:
            loss_g = loss_g + loss_text.float()
    if scaler is not None:
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        scaler.update()
    else:
        loss_g.backward()
        opt_g.step()
    return torch.stack([loss_d.detach(), loss_g.detach(),
                        torch.sigmoid(logit_real.detach().float()).mean(),
                        torch.sigmoid(logit_fake.detach().float()).mean(), loss_text.detach().float()])


def fixed_noise(t: TrainSpec, n: int = GRID * GRID) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The noise (and labels 0,1,2,... per column) of every epoch's sample grid."""
    z = torch.randn(n, t.model.z_dim, generator=torch.Generator().manual_seed(mix(t.seed, "grid")))
    labels = torch.arange(n) % t.model.num_classes if t.model.conditional else None
    return z, labels


@torch.no_grad()
def sample_grid(G: nn.Module, t: TrainSpec, device: torch.device) -> bytes:
    g = unwrap(G)
    was_training = g.training
    g.eval()  # the grid shows what the exported (eval-mode) generator makes
    z, labels = fixed_noise(t)
    out = g(z.to(device), labels.to(device) if labels is not None else None)
    g.train(was_training)
    return grid_png(out)


def save_checkpoint(directory: str, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
                    opt_d: torch.optim.Optimizer, state: dict, scaler: Any = None,
                    G_ema: nn.Module | None = None) -> dict:
    """Write models, optimizers and state.json (with each file's size and sha256) into ``directory``.

    ``G_ema`` (the moving average of G, ``train.ema``) goes into models.safetensors as ``G_ema.*``.
    """
    parts = {"G": G, "D": D, **({EMA_PART: G_ema} if G_ema is not None else {})}
    return save_parts(directory, parts, {"G": opt_g, "D": opt_d}, state, scaler)


def restore(ck: LoadedCheckpoint, G: nn.Module, D: nn.Module) -> None:
    for name, m in (("G", G), ("D", D)):
        load_part(ck, name, m)


def exported_generator(ck: LoadedCheckpoint, t: TrainSpec) -> nn.Module:
    """The generator a checkpoint exports: its moving average of G when it has one, else G."""
    G = Generator(t.model)
    load_part(ck, EMA_PART if ck.part(EMA_PART) else "G", G)
    return G


def restore_optimizers(ck: LoadedCheckpoint, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                       t: TrainSpec) -> None:
    for name, opt in (("G", opt_g), ("D", opt_d)):
        # the spec is the source of truth for hyper-parameters: each group's learning rate as make_optimizers set
        # it from the spec (G's text encoder has its own, train.model.text_encoder.lr), not one rate for all
        lrs = [group["lr"] for group in opt.param_groups]
        try:
            opt.load_state_dict(ck.optimizer_state(name))
        except (ValueError, KeyError, RuntimeError) as exc:
            raise PipelineError(f"{ck.where}/{OPTIM_FILE}: {name} optimizer state does not fit ({exc})") from None
        for group, lr in zip(opt.param_groups, lrs):
            group["lr"], group["betas"] = lr, (t.beta1, t.beta2)


def loop(config: dict) -> None:
    """The loop every Ray Train worker runs (rank 0 also checkpoints, samples and reports progress)."""
    import ray
    import ray.train
    import ray.train.torch

    w = start_worker(config)
    cfg, rank, world, device, progress = w.cfg, w.rank, w.world, w.device, w.progress
    t = cfg.job.train

    # 1. data: this worker's part of every epoch, streamed from the data cache (pipeline.image.stream)
    stream = cfg.data.stream()
    n = stream.count
    steps = stream.steps(world, t.batch_size)
    conditional = t.model.conditional

    # 2. models from the seed, or from the latest checkpoint (after a resume or a worker restart)
    G, D = build_models(t)
    te = t.model.text_encoder if conditional else None
    classes = caption_classes(t.model, cfg.classes)
    templates = phrasing(t.model)[0]  # "a handwritten seven" for images, "say seven" for speech
    ck, rng = w.resume(PARTS)
    start_epoch, global_step, history, resumed_from = resumed(ck)
    if ck is not None:
        restore(ck, G, D)
    G_ema = build_ema(t, G, ck, device)
    # Distributed: two separate DDP wrappers (one module holding both breaks GAN training).
    G = ray.train.torch.prepare_model(G)
    D = ray.train.torch.prepare_model(D)
    opt_g, opt_d = make_optimizers(G, D, t)

    use_amp = device.type == "cuda" and t.mixed_precision
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16) if use_amp else None

    if ck is not None:
        restore_optimizers(ck, opt_g, opt_d, t)
        if scaler is not None and ck.state.get("grad_scaler"):
            scaler.load_state_dict(ck.state["grad_scaler"])
        if rng is not None:
            set_rng_state(*rng)
    else:
        seed_worker(t.seed, rank)

    nodes = world_nodes(world)
    progress(GANProgress("start", start_epoch, t.epochs, steps=steps, global_step=global_step,
                         resumed_from=resumed_from, world_size=world, nodes=nodes))
    for epoch in range(start_epoch, t.epochs):
        noise = torch.Generator().manual_seed(mix(t.seed, epoch, rank))
        captions = random.Random(mix(t.seed, "captions", epoch, rank))  # which caption each label gets
        augment = augmenter(t, epoch, rank)
        sums = torch.zeros(5, device=device)
        t0 = last = time.perf_counter()
        for step, (batch, batch_labels) in enumerate(stream.epoch(epoch, rank, world, t.batch_size, t.seed)):
            real = to_float(batch.to(device))  # uint8 over the bus (a quarter of the bytes), floats on the device
            lab = batch_labels.to(device) if conditional else None
            z = torch.randn(len(batch), t.model.z_dim, generator=noise).to(device)
            text = None
            if te is not None:
                text = featurize([caption(classes[i], captions, templates) for i in lab.tolist()], te).to(device)
            out = gan_step(G, D, opt_g, opt_d, real, lab, z, autocast, scaler, text, augment, r1_weight(t, global_step))
            sums += out
            global_step += 1
            if G_ema is not None:
                ema_update(G_ema, unwrap(G), t.ema, global_step)
            now = time.perf_counter()
            if rank == 0 and now - last > PROGRESS_EVERY_S:
                last = now
                progress(GANProgress("step", epoch, t.epochs, step + 1, steps, global_step,
                                  {"loss_D": out[0].item(), "loss_G": out[1].item(),
                                   "images/s": (step + 1) * t.batch_size * world / (now - t0)}))
        seconds = time.perf_counter() - t0
        # Distributed: average the epoch's metrics over all ranks (the loop's only explicit collective).
        if world > 1:
            torch.distributed.all_reduce(sums)
        means = (sums / (steps * world)).tolist()
        metrics = {"epoch": epoch, "global_step": global_step, "loss_D": means[0], "loss_G": means[1],
                   "D(x)": means[2], "D(G(z))": means[3], **({"loss_text": means[4]} if te is not None else {}),
                   "images/s": steps * t.batch_size * world / seconds,
                   "seconds": seconds}
        history.append(metrics)

        # 3. checkpoint: rank 0 writes models, optimizers, state and samples; every rank its RNG
        def write(tmp: str, state: dict) -> None:
            if G_ema is not None:
                ema_bn(G_ema, t)  # its BN statistics, for the checkpoint, the grid and the export
            save_checkpoint(tmp, G, D, opt_g, opt_d, state, scaler, G_ema)
            write_samples(cfg, tmp, epoch, sample_grid(G_ema if G_ema is not None else G, t, device), "png")

        report_epoch(cfg, epoch, rank, metrics, history, write, world_size=world, steps_per_epoch=steps, num_examples=n)
        progress(GANProgress("epoch", epoch, t.epochs, steps, steps, global_step, metrics))
