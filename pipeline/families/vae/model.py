"""A conditional convolutional VAE with a discretized logistic decoder.

* **Encoder** q(z | x, y): stride-2 convolutions (as the DCGAN's D) to a feature vector, the
  class embedding added, then linear maps to the posterior's mean and log-variance.
* **Decoder** p(x | z, y): the DCGAN's G shape (transposed convolutions from z ⊕ class embedding)
  to the mean μ ∈ [-1, 1] of every pixel, and one learned log-scale per channel.
* **Likelihood**: each 8-bit pixel value is one of 256 bins of a logistic around μ (Salimans et
  al. 2017, one component), so −log p(x|z) is a true code length and the ELBO a bound on the
  data's bits per dimension, comparable across models and N.
* **ELBO** = E_q[log p(x|z,y)] − KL(q(z|x,y) ‖ N(0, I)); training minimises
  −E_q[log p(x|z,y)] + β_t·KL per dimension, β_t ramping linearly from 0 to ``beta`` over
  ``kl_warmup_steps`` (KL warm-up, Bowman et al. 2016), a function of the global step alone.

The package's network is the whole VAE; as an *image generator* (``forward(z, labels, cond)``)
it decodes: the decoder's mean image of a prior sample, the VAE's customary sample.

    >>> from pipeline.catalog.vae import VAEConfig
    >>> vae = VAE(VAEConfig(arch="vae", z_dim=8, width=8))
    >>> vae(torch.randn(2, 8), torch.tensor([3, 4])).shape
    torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.catalog.vae import VAEConfig

BINS = 255.0  # 8-bit pixels in [-1, 1]: bin edges are ±1/255 around each of the 256 values


def _start_and_steps(image_size: int) -> tuple[int, int]:
    return {28: (7, 2), 32: (4, 3), 64: (4, 4)}[image_size]


class VAE(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        start, steps = _start_and_steps(cfg.image_size)
        self.start = start
        # encoder: x → h
        layers: list[nn.Module] = []
        c_in, width = cfg.channels, cfg.width
        for _ in range(steps):
            layers += [nn.Conv2d(c_in, width, 4, 2, 1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, True)]
            c_in, width = width, width * 2
        self.encoder = nn.Sequential(*layers)
        self.feat = c_in * start * start
        self.embed_enc = nn.Embedding(cfg.num_classes, self.feat) if cfg.conditional else None
        self.to_mu = nn.Linear(self.feat, cfg.z_dim)
        self.to_logvar = nn.Linear(self.feat, cfg.z_dim)
        # decoder: z ⊕ e(y) → μ
        self.cond_dim = cfg.z_dim if cfg.conditional else 0
        self.embed = nn.Embedding(cfg.num_classes, self.cond_dim) if cfg.conditional else None
        width = cfg.width * 2 ** (steps - 1)
        dec: list[nn.Module] = [nn.ConvTranspose2d(cfg.z_dim + self.cond_dim, width, start, 1, 0),
                                nn.BatchNorm2d(width), nn.ReLU(True)]
        for _ in range(steps - 1):
            dec += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        dec += [nn.ConvTranspose2d(width, cfg.channels, 4, 2, 1), nn.Tanh()]
        self.decoder = nn.Sequential(*dec)
        self.log_scale = nn.Parameter(torch.full((cfg.channels,), -2.0))
        self.text = None  # prompts reach this model through their labels only

    # -- the image generator interface (generation, evaluation, sample grids)
    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        assert self.embed is not None, "unconditional VAE"
        return self.embed(labels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                x: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The decoder's mean image of ``z`` (and a class): images in [-1, 1].

        With ``x`` (training), ``z`` is the posterior noise ε and the result is ``(−log p(x|z), KL)``
        per image (:meth:`terms`): computed inside forward, so DDP syncs every gradient.
        """
        if x is not None:
            return self.terms(x, labels, z)
        return self.decode(z, labels, cond)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None, cond: torch.Tensor | None = None
               ) -> torch.Tensor:
        if self.cond_dim:
            if cond is None:
                if labels is None:
                    raise ValueError("conditional VAE needs labels or cond")
                cond = self.condition(labels)
            z = torch.cat([z, cond.to(z.dtype)], dim=1)
        return self.decoder(z[:, :, None, None])

    # -- the model itself
    def encode(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x).flatten(1)
        if self.embed_enc is not None:
            h = h + self.embed_enc(labels)
        return self.to_mu(h), self.to_logvar(h).clamp(-30.0, 20.0)

    def nll(self, x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """−log p(x | z) in nats per image under the discretized logistic around ``mean``."""
        log_s = self.log_scale.clamp(min=-7.0).view(1, -1, 1, 1)
        centered = x - mean
        inv_s = torch.exp(-log_s)
        plus, minus = inv_s * (centered + 1.0 / BINS), inv_s * (centered - 1.0 / BINS)
        log_cdf_plus = plus - F.softplus(plus)  # log σ(plus): the lowest bin takes everything below
        log_one_minus_cdf_minus = -F.softplus(minus)  # log(1 − σ(minus)): the highest bin everything above
        cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
        mid = inv_s * centered
        log_pdf_mid = mid - log_s - 2.0 * F.softplus(mid)  # a tiny bin: its density times its width
        inner = torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)), log_pdf_mid - math.log(BINS / 2))
        log_p = torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, inner))
        return -log_p.flatten(1).sum(1)

    def terms(self, x: torch.Tensor, labels: torch.Tensor | None, eps: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(−log p(x|z), KL(q‖p)) per image in nats, z = μ + σ·eps drawn from q by the caller's noise."""
        mu, logvar = self.encode(x, labels)
        z = mu + torch.exp(0.5 * logvar) * eps
        nll = self.nll(x, self.decode(z, labels))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        return nll, kl


def kl_weight(cfg: VAEConfig, global_step: int) -> float:
    """β_t of the step after ``global_step`` steps: linear warm-up to ``beta``."""
    if not cfg.kl_warmup_steps:
        return cfg.beta
    return cfg.beta * min(1.0, (global_step + 1) / cfg.kl_warmup_steps)


def bits_per_dim(nats_per_image: float, dims: int) -> float:
    return nats_per_image / (dims * math.log(2.0))
