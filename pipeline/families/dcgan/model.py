"""DCGAN generator and discriminator (Radford et al. 2015), sized from a :class:`DCGANConfig`.

* ``image_size`` 28, 32 or 64; 1, 3 or 4 (RGBA) channels; configurable ``z_dim`` and widths.
* G doubles its feature maps with transposed convs (DCGAN) or upsample + 3x3 conv
  (``g_upsample``); D can add a minibatch standard-deviation feature (``d_minibatch_std``).
* Optional class conditioning: G concatenates a condition vector to z (a label embedding by
  default, or any vector of ``cond_dim`` given by the caller, e.g. a text encoder); D is a
  projection discriminator (Miyato & Koyama 2018).

    >>> from pipeline.catalog.dcgan import DCGANConfig
    >>> g = Generator(DCGANConfig(image_size=32, z_dim=16, g_width=8))
    >>> g(torch.randn(2, 16)).shape
    torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.catalog.dcgan import DCGANConfig
from pipeline.models.text_encoder import Features, TextEncoder


def _start_and_steps(image_size: int) -> tuple[int, int]:
    """Spatial size of the first feature map and the number of 2x upsamplings to reach image_size."""
    return {28: (7, 2), 32: (4, 3), 64: (4, 4)}[image_size]


def init_weights(m: nn.Module) -> None:
    """DCGAN init: N(0, 0.02) convs, N(1, 0.02) BN scales."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, 0.0, 1.0)


def _up(cfg: DCGANConfig, c_in: int, c_out: int) -> list[nn.Module]:
    """One 2x upsampling of G: DCGAN's stride-2 transposed conv, or an upsample then a 3x3 conv.

    A transposed 4x4 conv with stride 2 overlaps its kernel unevenly and leaves checkerboard
    patterns (Odena et al. 2016); upsample + conv has none. On the digits it halved FLD.
    """
    if cfg.g_upsample == "transposed":
        return [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False)]
    return [nn.Upsample(scale_factor=2, mode=cfg.g_upsample), nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)]


class MinibatchStd(nn.Module):
    """Appends one feature map: the mean over features of their standard deviation across the batch.

    Minibatch discrimination, simplified as in ProGAN (Karras et al. 2018): D can see that a batch
    of look-alikes lacks the variety of real images, so G is pushed to cover more of each class.
    (Distributed: the batch is this rank's.)
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        std = x.float().std(0, unbiased=False).mean().to(x.dtype)
        return torch.cat([x, std.expand(x.shape[0], 1, *x.shape[2:])], dim=1)


class Generator(nn.Module):
    def __init__(self, cfg: DCGANConfig, cond_dim: int | None = None):
        super().__init__()
        self.cfg = cfg
        start, steps = _start_and_steps(cfg.image_size)
        self.cond_dim = (cond_dim or cfg.z_dim) if cfg.conditional else 0
        te = cfg.text_encoder if cfg.conditional else None
        self.embed = nn.Embedding(cfg.num_classes, self.cond_dim) if cfg.conditional else None
        width = cfg.g_width * 2 ** (steps - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(cfg.z_dim + self.cond_dim, width, start, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(steps - 1):
            layers += [*_up(cfg, width, width // 2), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [*_up(cfg, width, cfg.channels), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(init_weights)
        if self.embed is not None:
            # A label embedding as large as z (N(0, 1)) lets G draw one prototype per class and
            # ignore z (measured on digits: within-class pixel std 0.04 vs 0.29 for real digits);
            # starting it 10x smaller keeps z in charge of the variation (0.18 after 8 epochs).
            nn.init.normal_(self.embed.weight, 0.0, 0.1)
        # A prompt's condition is its class posterior (from the text encoder) times the label
        # embeddings. Built last, so G's own weights start the same with or without it.
        self.text = TextEncoder(te, cfg.num_classes) if te is not None else None

    def condition(self, labels: torch.Tensor) -> torch.Tensor:
        """Label → condition vector."""
        assert self.embed is not None, "unconditional generator"
        return self.embed(labels)

    def prompt_posterior(self, prompts: list[str]) -> torch.Tensor:
        """Prompt texts → class probabilities (N, classes), from the text encoder."""
        if self.text is None:
            raise ValueError("this generator has no text encoder")
        return F.softmax(self.text.logits(prompts).float(), dim=1)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompt texts → condition vectors: the posterior-weighted mix of the class embeddings."""
        assert self.embed is not None
        return self.prompt_posterior(prompts) @ self.embed.weight

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                text: Features | None = None, text_targets: torch.Tensor | None = None
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Images from z and a condition: ``cond``, else featurized prompt ``text``, else ``labels``.

        With ``text_targets`` (training: ``text`` holds captions of ``labels``), the images come from
        the labels and ``(images, loss)`` is returned, ``loss`` being the text encoder's cross-entropy
        on the captions: computed inside forward, so DDP syncs the encoder's gradients too.
        """
        aux = None
        if self.cond_dim:
            if text is not None:
                if self.text is None:
                    raise ValueError("this generator has no text encoder")
                if text_targets is not None:
                    aux = F.cross_entropy(self.text(text).float(), text_targets)
                elif cond is None:
                    cond = F.softmax(self.text(text).float(), dim=1) @ self.embed.weight
            if cond is None:
                if labels is None:
                    raise ValueError("conditional generator needs labels, text or cond")
                cond = self.condition(labels)
            z = torch.cat([z, cond.to(z.dtype)], dim=1)
        images = self.net(z[:, :, None, None])
        return images if text_targets is None else (images, aux)


class Discriminator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.cfg = cfg
        _, steps = _start_and_steps(cfg.image_size)
        width = cfg.d_width
        layers: list[nn.Module] = [nn.Conv2d(cfg.channels, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(steps - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                       nn.LeakyReLU(0.2, True)]
            width *= 2
        if cfg.d_minibatch_std:
            layers += [MinibatchStd(), nn.Conv2d(width + 1, width, 3, 1, 1), nn.LeakyReLU(0.2, True)]
        self.features = nn.Sequential(*layers)
        start, _ = _start_and_steps(cfg.image_size)
        self.feat_dim = width * start * start
        self.out = nn.Linear(self.feat_dim, 1)
        self.embed = nn.Embedding(cfg.num_classes, self.feat_dim) if cfg.conditional else None
        self.apply(init_weights)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(x).flatten(1)
        logit = self.out(h).squeeze(1)
        if self.embed is not None:
            if labels is None:
                raise ValueError("conditional discriminator needs labels")
            logit = logit + (self.embed(labels) * h).sum(1) / self.feat_dim**0.5  # projection term
        return logit
