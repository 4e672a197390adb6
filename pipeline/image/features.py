"""The feature extractor of the image evaluation: a domain classifier on labelled data, an
autoencoder on unlabelled data, trained once per data set and split and cached pickle-free.

No Inception weights can be downloaded here, so, as TF-GAN's ``mnist_frechet_distance`` does, a
small LeNet-style classifier (:mod:`pipeline.models.classifier`) is trained on the labelled
reference set; its 128-d penultimate layer gives the features, its softmax the class
probabilities. Unlabelled data gets a small convolutional autoencoder instead (its 128-d code
are the features, and there is no classifier score). The extractor is trained with one thread
(bit-identical weights for any model evaluated on the same data) and stored as safetensors +
JSON, manifest, ``_SUCCESS`` in ``<package>.eval/extractor/<key>/``.

RGBA images (4 channels) go in as *premultiplied* RGBA, four input channels: colour times alpha,
and alpha. What a viewer sees of a pixel is then all the extractor sees (the colour under alpha 0,
invisible, counts for nothing, and a faint pixel's colour only as much as it shows), while the
shape of the transparency stays a feature of its own, which compositing on a background would lose.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.image.data import digits_arrays
from pipeline.image.realdata import RealData, Split, to_float
from pipeline.models.classifier import DigitClassifier, accuracy, train_classifier
from pipeline.specs.schema import StorageSpec
from pipeline.storage import Store, is_published, package_versions, publish

EXTRACTOR_FORMAT = "aigc-extractor/1"
EXTRACTOR_JSON = "extractor.json"
EXTRACTOR_WEIGHTS = "extractor.safetensors"
CLASSIFIER_EPOCHS = 12
AUTOENCODER_EPOCHS = 15
FEATURE_BATCH = 512


class ConvAutoencoder(nn.Module):
    """Feature extractor for unlabelled data: conv encoder to a 128-d code, mirrored decoder."""

    def __init__(self, image_size: int = 32, channels: int = 1, code: int = 128, width: int = 32):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        self.image_size, self.channels, self.code, self.width = image_size, channels, code, width
        s = image_size // 4
        self.enc = nn.Sequential(nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Flatten(), nn.Linear(2 * width * s * s, code))
        self.dec = nn.Sequential(nn.Linear(code, 2 * width * s * s), nn.ReLU(), nn.Unflatten(1, (2 * width, s, s)),
                                 nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Tanh())

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


def train_autoencoder(images: torch.Tensor, *, epochs: int = AUTOENCODER_EPOCHS, batch_size: int = 64,
                      lr: float = 2e-3, seed: int = 0) -> ConvAutoencoder:
    """Train a :class:`ConvAutoencoder` on float images in [-1, 1] (MSE); returns it in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvAutoencoder(images.shape[-1], images.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(images), generator=gen)
        for i in range(0, len(images), batch_size):
            x = images[perm[i:i + batch_size]]
            loss = F.mse_loss(model(x), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


def extractor_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, S, S) → the extractor's float input in [-1, 1]; RGBA premultiplied (see above)."""
    x = to_float(images)
    if x.shape[1] == 4:
        alpha = (x[:, 3:] + 1) / 2
        x = torch.cat([(x[:, :3] + 1) * alpha - 1, x[:, 3:]], dim=1)
    return x


@dataclass
class FeatureExtractor:
    """A trained feature network: ``classifier`` (features + class probabilities) or ``autoencoder``."""

    kind: str
    net: nn.Module
    meta: dict[str, Any]
    uri: str = ""

    @torch.inference_mode()
    def features(self, images: np.ndarray) -> np.ndarray:
        """float64 (N, 128) features of uint8 images."""
        out = [self.net.features(extractor_input(images[i:i + FEATURE_BATCH]))
               for i in range(0, len(images), FEATURE_BATCH)]
        return torch.cat(out).double().numpy()

    @torch.inference_mode()
    def probs(self, images: np.ndarray) -> np.ndarray | None:
        """Class probabilities (N, classes) of uint8 images; None for an autoencoder."""
        if self.kind != "classifier":
            return None
        out = [F.softmax(self.net(extractor_input(images[i:i + FEATURE_BATCH])), 1)
               for i in range(0, len(images), FEATURE_BATCH)]
        return torch.cat(out).double().numpy()


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Train on one thread: CPU kernels then sum in one order, so the weights are the same on any machine size."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def choose_extractor(wanted: str, real: RealData) -> str:
    if wanted == "auto":
        return "classifier" if real.labelled else "autoencoder"
    if wanted == "classifier" and not real.labelled:
        raise PipelineError(f"evaluate.extractor: 'classifier' needs labelled data, but {real.source} has no labels "
                            "(use 'autoencoder', or 'auto')")
    return wanted


def _build_extractor(meta: dict[str, Any]) -> nn.Module:
    if meta["kind"] == "classifier":
        return DigitClassifier(meta["image_size"], meta["channels"], meta["num_classes"], meta["width"])
    return ConvAutoencoder(meta["image_size"], meta["channels"], meta["code"], meta["width"])


def _train_extractor(kind: str, real: RealData, split: Split, num_classes: int, seed: int) -> tuple[nn.Module, dict]:
    # its held-out quality: on the whole test split when one is given, else on the floor's N held-out images
    judged = split.test if split.tested else split.heldout
    x_ref, x_held = extractor_input(real.images[split.reference]), extractor_input(real.images[judged])
    with one_thread():
        if kind == "classifier":
            y_ref, y_held = torch.from_numpy(real.labels[split.reference]), torch.from_numpy(real.labels[judged])
            net = train_classifier(x_ref, y_ref, num_classes=num_classes, epochs=CLASSIFIER_EPOCHS, seed=seed)
            meta = {"num_classes": num_classes, "width": net.conv1.out_channels, "epochs": CLASSIFIER_EPOCHS,
                    "heldout_accuracy": round(accuracy(net, x_held, y_held), 6)}
        else:
            net = train_autoencoder(x_ref, seed=seed)
            with torch.inference_mode():
                mse = F.mse_loss(net(x_held), x_held).item()
            meta = {"code": net.code, "width": net.width, "epochs": AUTOENCODER_EPOCHS, "heldout_mse": round(mse, 6)}
    if split.tested:
        meta.update(heldout_on="test split", heldout_count=len(judged))
    return net, meta


def extractor_key(kind: str, real: RealData, split: Split, num_classes: int, seed: int) -> str:
    """Its cache key: the data and split it trains on and is judged on. With a test split (whose fingerprint
    ``real``'s covers) it trains on all the training data and is judged on all the test split, whatever N."""
    n = f"test:{split.test_fingerprint}" if split.tested else str(split.n)
    parts = [EXTRACTOR_FORMAT, kind, real.fingerprint, n, str(seed), str(num_classes),
             str(CLASSIFIER_EPOCHS if kind == "classifier" else AUTOENCODER_EPOCHS)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def load_extractor(uri: str, storage: StorageSpec | None = None) -> FeatureExtractor:
    """Load a published extractor package (safetensors + JSON; nothing is unpickled)."""
    from safetensors.torch import load

    store = Store(uri, storage)
    meta = store.read_json(EXTRACTOR_JSON)
    net = _build_extractor(meta)
    try:
        net.load_state_dict(load(store.read(EXTRACTOR_WEIGHTS)), strict=True)
    except Exception as exc:  # noqa: BLE001 - safetensors or shape errors
        raise PipelineError(f"{uri}/{EXTRACTOR_WEIGHTS}: unreadable feature extractor "
                            f"({str(exc).splitlines()[0][:120]}); "
                            "delete that folder to retrain it") from None
    return FeatureExtractor(kind=meta["kind"], net=net.eval(), meta=meta, uri=store.uri)


def extractor_for(kind: str, real: RealData, split: Split, num_classes: int, seed: int, *, cache_uri: str,
                  storage: StorageSpec | None = None, log: Callable[[str], None] = print) -> FeatureExtractor:
    """The feature extractor for this data and split: from the cache, else trained once and published there."""
    from safetensors.torch import save

    key = extractor_key(kind, real, split, num_classes, seed)
    store = Store(f"{cache_uri.rstrip('/')}/extractor/{key}", storage)
    if is_published(store):
        return load_extractor(store.uri, storage)
    log(f"evaluate: training the {kind} feature extractor on {len(split.reference):,} reference images "
        f"(once; cached at {store.uri})")
    t0 = time.monotonic()
    net, extra = _train_extractor(kind, real, split, num_classes, seed)
    size, channels = real.images.shape[-1], real.images.shape[1]
    meta = {"format": EXTRACTOR_FORMAT, "kind": kind, "key": key, "image_size": size, "channels": channels,
            "data_fingerprint": real.fingerprint, "data_source": real.source, "trained_on": len(split.reference),
            "seed": seed, "seconds": round(time.monotonic() - t0, 2), "versions": package_versions(), **extra}
    weights = save({k: v.detach().contiguous() for k, v in net.state_dict().items()},
                   metadata={"format": EXTRACTOR_FORMAT})
    files = {EXTRACTOR_WEIGHTS: weights, EXTRACTOR_JSON: json.dumps(meta, indent=1, sort_keys=True).encode()}
    publish(store, kind="extractor", job="", spec=None, counts={"files": len(files)}, files=files)
    return FeatureExtractor(kind=kind, net=net, meta=meta, uri=store.uri)


@lru_cache(maxsize=4)
def digits_classifier(image_size: int = 32, seed: int = 0, epochs: int = CLASSIFIER_EPOCHS) -> DigitClassifier:
    """A classifier trained on all 1,797 embedded digits at ``image_size`` (cached per process): the judge
    of "does this look like a digit?" in the training tests."""
    images, labels = digits_arrays(image_size, channels=1)
    return train_classifier(to_float(torch.from_numpy(images)), torch.from_numpy(labels), seed=seed, epochs=epochs)
