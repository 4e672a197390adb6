"""A small LeNet-style digits classifier: the domain judge of "does this look like a digit?".

The training tests use it to check that a trained generator makes recognisable digits, and the
evaluation stage reuses it for classifier-based scores (confidence, Frechet distance on its
penultimate features). It trains in seconds on one CPU::

    from pipeline.image.features import digits_classifier   # the embedded digits are the image layer's
    from pipeline.models.classifier import classify
    clf = digits_classifier(image_size=32)             # trains on the embedded digits
    probs = classify(clf, images)                       # images: (N, 1, 32, 32) in [-1, 1]
    confident = (probs.max(1).values > 0.9).float().mean()

Weights are deterministic for a given seed and thread count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DigitClassifier(nn.Module):
    """conv5-pool-conv5-pool-fc-fc for (N, C, S, S) images in [-1, 1], S divisible by 4."""

    def __init__(self, image_size: int = 32, channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.conv1 = nn.Conv2d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 5, padding=2)
        self.fc1 = nn.Linear(2 * width * (image_size // 4) ** 2, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate 128-d features (for Frechet distances)."""
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.features(x))


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (zero-padded with the background, -1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def train_classifier(images: torch.Tensor, labels: torch.Tensor, *, num_classes: int = 10, epochs: int = 12,
                     batch_size: int = 64, lr: float = 2e-3, seed: int = 0, max_shift: int = 2) -> DigitClassifier:
    """Train a :class:`DigitClassifier` on float images in [-1, 1] and int labels; returns it in eval mode.

    Random shifts of up to ``max_shift`` pixels make it judge shapes, not exact positions, so it
    does not reject generated digits that sit a pixel off-centre.
    """
    if images.ndim != 4 or len(images) != len(labels) or len(images) == 0:
        raise ValueError("images must be (N, C, S, S) with one label each")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(images.shape[-1], images.shape[1], num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch_size):
            idx = perm[i:i + batch_size]
            x = _shift(images[idx], gen, max_shift) if max_shift else images[idx]
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


@torch.inference_mode()
def classify(model: DigitClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Class probabilities (N, num_classes) for float images in [-1, 1]."""
    model.eval()
    return torch.cat([F.softmax(model(images[i:i + batch_size].float()), 1) for i in range(0, len(images), batch_size)])


@torch.inference_mode()
def accuracy(model: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (classify(model, images).argmax(1) == labels).float().mean().item()
