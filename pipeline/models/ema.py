"""An exponential moving average (EMA) of the generator's weights, the generator that gets exported.

GAN weights keep oscillating around a good solution; their running average sits closer to it
(Yazıcı et al. 2019; BigGAN, StyleGAN export the EMA generator too). The average is taken over
parameters only. Batch-norm statistics of averaged weights are not the average of the live
generator's statistics, so :func:`recalibrate_bn` recomputes them from fresh samples of the
averaged generator (seeded, so they are a function of the weights and the seed alone).

    >>> from pipeline.catalog.dcgan import DCGANConfig
    >>> from pipeline.families.dcgan.model import Generator
    >>> g = Generator(DCGANConfig(image_size=32, z_dim=8, g_width=8, conditional=True))
    >>> avg = copy.deepcopy(g)
    >>> ema_update(avg, g, decay=0.999, step=1)
    >>> recalibrate_bn(avg, torch.Generator().manual_seed(0)).training
    False
"""

from __future__ import annotations

import copy  # noqa: F401 - used in the docstring example

import torch
from torch import nn

BN_BATCHES = 20  # batches of fresh samples whose statistics become the averaged G's BN statistics
BN_BATCH_SIZE = 128


def ema_decay(decay: float, step: int) -> float:
    """The decay after ``step`` optimizer steps (this one included): ``decay``, ramped up early on.

    ``min(decay, (1 + step) / (10 + step))`` (as in TensorFlow's ExponentialMovingAverage with
    ``num_updates``): the average forgets the random start quickly, and averages over roughly the
    last tenth of training while that is shorter than ``1 / (1 - decay)`` steps.
    """
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(average: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """``average <- d * average + (1 - d) * model`` for every parameter, d = :func:`ema_decay`."""
    d = ema_decay(decay, step)
    for a, p in zip(average.parameters(), model.parameters()):
        a.lerp_(p.detach(), 1.0 - d)


@torch.no_grad()
def recalibrate_bn(g: nn.Module, gen: torch.Generator, batches: int = BN_BATCHES,
                   batch_size: int = BN_BATCH_SIZE) -> nn.Module:
    """Recompute G's batch-norm statistics from ``batches`` batches of its own samples; returns G in eval mode.

    Latents and (for a conditional G) uniformly drawn labels come from ``gen``. Each statistic is
    the plain average over the batches (momentum None), so it depends on the weights and ``gen``
    only, not on what the buffers held before.
    """
    norms = [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return g.eval()
    device = next(g.parameters()).device
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    cfg = g.cfg
    g.train()
    for _ in range(batches):
        z = torch.randn(batch_size, cfg.z_dim, generator=gen).to(device)
        labels = torch.randint(0, cfg.num_classes, (batch_size,), generator=gen).to(device) if cfg.conditional else None
        g(z, labels)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return g.eval()
