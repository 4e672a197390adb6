"""Model quality you can measure and gate: FLD, classifier score, precision/recall and memorization,
each at a fixed N and each beside the same metric for real data (the real-vs-real floor).

    aigc evaluate outputs/models/demo/<version> [--job jobs/demo.yaml] [--samples 1000]

or as the ``evaluate:`` stage of a job, which ``aigc run`` runs between train and generate: a
failing ``evaluate.gate`` raises :class:`~pipeline.errors.GateFailed` and nothing is generated.

How an evaluation runs (all of it seeded by ``evaluate.seed``, so a rerun gives the same figures):

1. **Real data.** The model's training data (``evaluate.data``, else ``train.data``, else what the
   package's ``model.json`` names) at the model's size and channels, as uint8 arrays. A seeded
   permutation holds out N = ``evaluate.samples`` images; the rest is the *reference* set.
2. **Features.** No Inception weights can be downloaded here, so, as TF-GAN's
   ``mnist_frechet_distance`` does, a small LeNet-style classifier
   (:mod:`pipeline.models.classifier`) is trained on the labelled reference set; its 128-d
   penultimate layer gives the features, its softmax the class probabilities. Unlabelled data
   gets a small convolutional autoencoder instead (its 128-d code are the features, and there is
   no classifier score). The extractor is trained once (one thread: bit-identical weights for any
   model evaluated on the same data) and stored as a pickle-free package (safetensors + JSON,
   manifest, ``_SUCCESS``) in ``<package>.eval/extractor/<key>/``, keyed by the data fingerprint
   and the split.
3. **Samples.** N images from G: latents from one ``torch.Generator(seed)``; a conditional G gets
   the held-out images' labels, so generated and held-out sets share one class mix. They are
   rounded to uint8 as published assets are.
4. **Metrics**, for the generated set and, as the floor, for the held-out set, both against the
   reference set and both at the same N:

   * ``fld``: Fréchet distance between Gaussians fitted to the features (FID with a domain network);
   * ``score``: classifier score, exp(E_x KL(p(y|x) || p(y))), the Inception Score with the domain
     classifier, one split of N; at most the number of classes;
   * ``precision``/``recall``: k-NN manifolds of Kynkäänniemi et al. 2019 (k = ``evaluate.k``) in
     feature space: the share of generated samples inside the real manifold, and of reference
     images inside the generated one;
   * ``memorization``: the share of samples whose nearest training image (all real images, the
     model saw them all) is closer in **pixel space** than a threshold. The threshold is the
     ``evaluate.memorization_quantile`` (default 1 %) quantile of real images' own
     nearest-neighbour distances to the *other* training images: "closer to a training image than
     99 % of real digits are to theirs". Distances are RMS per pixel, pixels in [0, 1]. The floor
     row counts held-out images closer than the threshold to a reference image.
5. **Result** in ``<package>.eval/n<N>.json`` (a sibling of the package, so ``aigc verify`` of the
   package stays clean), with a picture of the closest generated/training pairs. A rerun with the
   same package, N and settings reads it instead of computing it again. The gate is checked on
   every call, since its thresholds may change.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from pipeline.errors import GateFailed, PipelineError
from pipeline.package import ModelPackage, load_package, train_package_uri
from pipeline.specs import DataSpec, EvaluateSpec, GateSpec, JobSpec, ModelSpec, StorageSpec
from pipeline.storage import Store, StorageError, absolute_uri, is_published, package_versions, publish, resolve_recorded

EVAL_FORMAT = "aigc-eval/1"
EXTRACTOR_FORMAT = "aigc-extractor/1"
EXTRACTOR_JSON = "extractor.json"
EXTRACTOR_WEIGHTS = "extractor.safetensors"
EVAL_SUFFIX = ".eval"
CLASSIFIER_EPOCHS = 12
AUTOENCODER_EPOCHS = 15
FEATURE_BATCH = 512
SAMPLE_BATCH = 256
MAX_THRESHOLD_QUERIES = 5000  # real images whose NN distance sets the memorization threshold
CLOSEST_SHOWN = 8


# --------------------------------------------------------------------------------------------- layout
def eval_uri(package_uri: str) -> str:
    """Where a package's evaluations live: ``<package>.eval``, beside the package, not inside it."""
    return package_uri.rstrip("/") + EVAL_SUFFIX


def result_name(n: int) -> str:
    return f"n{n}.json"


def closest_name(n: int) -> str:
    return f"n{n}-closest.png"


# --------------------------------------------------------------------------------------------- 1. real data
@dataclass
class RealData:
    """The real images the model is judged against."""

    images: np.ndarray  # uint8 (count, channels, size, size)
    labels: np.ndarray  # int64; -1 where the data has no labels
    source: str  # "digits" or the data URI, for messages
    fingerprint: str  # sha256 of the pixels and labels as used here

    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def labelled(self) -> bool:
        return bool(self.count) and bool((self.labels >= 0).all())


@dataclass
class Split:
    """A seeded split of the real data: N held-out images for the floor, the rest as reference."""

    heldout: np.ndarray  # indices into RealData
    reference: np.ndarray

    @property
    def n(self) -> int:
        return len(self.heldout)


def real_data(data: DataSpec, model: ModelSpec, storage: StorageSpec | None = None,
              address: str | None = None) -> RealData:
    """The real images at the model's size and channels (digits without Ray; folders and Parquet via Ray Data)."""
    from pipeline.data import digits_arrays, load_data, read_all

    if data.source == "digits":
        images, labels = digits_arrays(model.image_size, model.channels, data.limit)
        source = "digits"
    else:
        from pipeline.runtime import ensure_ray

        ensure_ray(address)
        loaded = load_data(data, model, storage)
        x, y = read_all(loaded.dataset)
        images, labels, source = x.numpy(), y.numpy(), data.uri or data.source
    h = hashlib.sha256(f"{source}:{model.image_size}:{model.channels}:{images.shape}\n".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return RealData(images=np.ascontiguousarray(images), labels=np.asarray(labels, np.int64), source=source,
                    fingerprint=h.hexdigest())


def split_real(real: RealData, n: int, seed: int) -> Split:
    """Hold out ``n`` images (seeded); the rest is the reference set, which must hold at least n/2."""
    need = n + max(n // 2, 2)
    if real.count < need:
        most = max((2 * real.count) // 3, 0)
        raise PipelineError(
            f"evaluate.samples: N={n:,} needs at least {need:,} real images (N held out for the real-vs-real floor "
            f"plus a reference set of at least N/2), but {real.source} has {real.count:,}; "
            f"use evaluate.samples <= {most:,}")
    perm = np.random.default_rng(seed).permutation(real.count)
    return Split(heldout=np.sort(perm[:n]), reference=np.sort(perm[n:]))


# --------------------------------------------------------------------------------------------- 2. features
def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, S, S) → float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)


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
        out = [self.net.features(to_float(images[i:i + FEATURE_BATCH])) for i in range(0, len(images), FEATURE_BATCH)]
        return torch.cat(out).double().numpy()

    @torch.inference_mode()
    def probs(self, images: np.ndarray) -> np.ndarray | None:
        """Class probabilities (N, classes) of uint8 images; None for an autoencoder."""
        if self.kind != "classifier":
            return None
        out = [F.softmax(self.net(to_float(images[i:i + FEATURE_BATCH])), 1) for i in range(0, len(images), FEATURE_BATCH)]
        return torch.cat(out).double().numpy()


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
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
    from pipeline.models.classifier import DigitClassifier

    if meta["kind"] == "classifier":
        return DigitClassifier(meta["image_size"], meta["channels"], meta["num_classes"], meta["width"])
    return ConvAutoencoder(meta["image_size"], meta["channels"], meta["code"], meta["width"])


def _train_extractor(kind: str, real: RealData, split: Split, num_classes: int, seed: int) -> tuple[nn.Module, dict]:
    from pipeline.models.classifier import accuracy, train_classifier

    x_ref, x_held = to_float(real.images[split.reference]), to_float(real.images[split.heldout])
    with _one_thread():
        if kind == "classifier":
            y_ref, y_held = torch.from_numpy(real.labels[split.reference]), torch.from_numpy(real.labels[split.heldout])
            net = train_classifier(x_ref, y_ref, num_classes=num_classes, epochs=CLASSIFIER_EPOCHS, seed=seed)
            meta = {"num_classes": num_classes, "width": net.conv1.out_channels, "epochs": CLASSIFIER_EPOCHS,
                    "heldout_accuracy": round(accuracy(net, x_held, y_held), 6)}
        else:
            net = train_autoencoder(x_ref, seed=seed)
            with torch.inference_mode():
                mse = F.mse_loss(net(x_held), x_held).item()
            meta = {"code": net.code, "width": net.width, "epochs": AUTOENCODER_EPOCHS, "heldout_mse": round(mse, 6)}
    return net, meta


def extractor_key(kind: str, real: RealData, split: Split, num_classes: int, seed: int) -> str:
    parts = [EXTRACTOR_FORMAT, kind, real.fingerprint, str(split.n), str(seed), str(num_classes),
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
        raise PipelineError(f"{uri}/{EXTRACTOR_WEIGHTS}: unreadable feature extractor ({str(exc).splitlines()[0][:120]}); "
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
    weights = save({k: v.detach().contiguous() for k, v in net.state_dict().items()}, metadata={"format": EXTRACTOR_FORMAT})
    files = {EXTRACTOR_WEIGHTS: weights, EXTRACTOR_JSON: json.dumps(meta, indent=1, sort_keys=True).encode()}
    publish(store, kind="extractor", job="", spec=None, counts={"files": len(files)}, files=files)
    return FeatureExtractor(kind=kind, net=net, meta=meta, uri=store.uri)


# --------------------------------------------------------------------------------------------- 3. samples
@torch.inference_mode()
def sample_images(generator: Callable[..., torch.Tensor], model: ModelSpec, n: int, seed: int,
                  labels: np.ndarray | None = None) -> np.ndarray:
    """N uint8 images from ``generator(z, labels)``, rounded exactly as published assets are."""
    z = torch.randn(n, model.z_dim, generator=torch.Generator().manual_seed(seed))
    y = torch.from_numpy(np.asarray(labels, np.int64)) if model.conditional and labels is not None else None
    out = []
    for i in range(0, n, SAMPLE_BATCH):
        x = generator(z[i:i + SAMPLE_BATCH], y[i:i + SAMPLE_BATCH] if y is not None else None)
        out.append(((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out).numpy()


def sample_labels(real: RealData, split: Split, model: ModelSpec) -> np.ndarray | None:
    """Labels for a conditional G: the held-out images' labels (same class mix as the floor)."""
    if not model.conditional:
        return None
    if not real.labelled:
        return np.arange(split.n, dtype=np.int64) % model.num_classes
    labels = real.labels[split.heldout]
    if labels.max(initial=0) >= model.num_classes:
        raise PipelineError(f"evaluate.data: {real.source} has label {int(labels.max())}, but the model knows only "
                            f"{model.num_classes} classes (train.model.num_classes)")
    return labels


# --------------------------------------------------------------------------------------------- 4. metrics
def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` (rows are samples)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrt(A B) = sum of sqrt(eigenvalues of sqrt(A) B sqrt(A)), which is symmetric PSD: stable via eigh.
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root_a @ cov_b @ root_a
    tr_root = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_root)


def classifier_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) || p(y))) over one split; 1 = no class or all one class, at most the class count."""
    p = np.asarray(probs, np.float64)
    marginal = p.mean(0, keepdims=True)
    kl = (p * (np.log(p + eps) - np.log(marginal + eps))).sum(1)
    return float(np.exp(kl.mean()))


def _d2(x: np.ndarray, xx: np.ndarray, y: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between float64 row blocks, given their squared norms."""
    d2 = xx[:, None] + yy[None, :] - 2 * x @ y.T
    # Rounding leaves ~1e-16 where a row equals a base row; an identical image must read 0, not 1e-8
    # (the smallest real difference, one gray level in one pixel of 64x64x3, is 1.2e-9 squared).
    d2[d2 < 1e-13] = 0.0
    return d2


def _distances(q: np.ndarray, base: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Euclidean distances from row chunks of ``q`` to all of ``base`` (small feature vectors): (offset, block)."""
    q, base = np.asarray(q, np.float64), np.asarray(base, np.float64)
    bb = (base ** 2).sum(1)
    chunk = max(16, 8_000_000 // max(len(base), 1))  # blocks of at most ~64 MB
    for lo in range(0, len(q), chunk):
        x = q[lo:lo + chunk]
        yield lo, np.sqrt(_d2(x, (x ** 2).sum(1), base, bb))


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point of the same set."""
    if len(features) <= k:
        raise PipelineError(f"evaluate.k: k={k} needs more than {k} samples, got {len(features)}")
    out = np.empty(len(features))
    for lo, d in _distances(features, features):
        d[np.arange(len(d)), lo + np.arange(len(d))] = np.inf  # not itself
        out[lo:lo + len(d)] = np.partition(d, k - 1, axis=1)[:, k - 1]
    return out


def manifold_coverage(query: np.ndarray, base: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``query`` points inside some ball (``base[j]``, ``radii[j]``)."""
    inside = 0
    for _, d in _distances(query, base):
        inside += int((d <= radii[None, :]).any(1).sum())
    return inside / len(query)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds."""
    precision = manifold_coverage(fake, real, knn_radii(real, k))
    recall = manifold_coverage(real, fake, knn_radii(fake, k))
    return precision, recall


def _pixel_rows(images: np.ndarray) -> np.ndarray:
    """uint8 images → float64 rows scaled so that Euclidean distance is the RMS difference per pixel in [0, 1]."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    return flat / (255.0 * math.sqrt(flat.shape[1]))


def nearest(query: np.ndarray, base: np.ndarray, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(RMS pixel distance, index) of each query image's nearest ``base`` image (both uint8 N×C×S×S).

    ``exclude[i]`` is a base index query i must not match (leave-one-out). Both sets are walked in
    blocks converted on the fly, so memory stays bounded for large RGB datasets.
    """
    n, m = len(query), len(base)
    dim = int(np.prod(base.shape[1:]))
    q_chunk, b_chunk = 512, min(8192, max(64, 32_000_000 // dim))  # ≤ 256 MB of base rows per block
    best, idx = np.full(n, np.inf), np.zeros(n, np.int64)
    for qlo in range(0, n, q_chunk):
        x = _pixel_rows(query[qlo:qlo + q_chunk])
        xx, rows = (x ** 2).sum(1), np.arange(len(x))
        for blo in range(0, m, b_chunk):
            y = _pixel_rows(base[blo:blo + b_chunk])
            d2 = _d2(x, xx, y, (y ** 2).sum(1))
            if exclude is not None:
                own = exclude[qlo:qlo + len(x)] - blo
                hit = (own >= 0) & (own < len(y))
                d2[rows[hit], own[hit]] = np.inf
            j = d2.argmin(1)
            v = d2[rows, j]
            better = v < best[qlo:qlo + len(x)]  # strict: ties keep the lower index
            best[qlo:qlo + len(x)][better] = v[better]
            idx[qlo:qlo + len(x)][better] = j[better] + blo
    return np.sqrt(best), idx


def memorization_threshold(train: np.ndarray, quantile: float, seed: int) -> float:
    """The ``quantile`` of real images' RMS pixel distances to their nearest *other* training image."""
    if len(train) < 2:
        raise PipelineError("evaluate: the memorization threshold needs at least 2 real images")
    queries = np.arange(len(train))
    if len(queries) > MAX_THRESHOLD_QUERIES:  # a seeded sample of queries; the base stays complete
        queries = np.sort(np.random.default_rng(seed).choice(queries, MAX_THRESHOLD_QUERIES, replace=False))
    dist, _ = nearest(train[queries], train, exclude=queries)
    return float(np.quantile(dist, quantile))


@dataclass
class Metrics:
    """One row of figures: the model's, or the real-vs-real floor's."""

    fld: float
    score: float | None  # None without a classifier
    precision: float
    recall: float
    memorization: float

    def to_json(self) -> dict[str, Any]:
        return {k: (None if v is None else round(float(v), 6)) for k, v in dataclasses.asdict(self).items()}


@dataclass
class Copy:
    """A generated sample and its nearest training image (the closest pairs are shown in reports)."""

    sample: int
    train_index: int
    distance: float


@dataclass
class Scores:
    """What :func:`score_images` measures for one set of images against the real data."""

    model: Metrics
    floor: Metrics
    threshold: float
    copies: list[Copy] = field(default_factory=list)


def score_images(fake: np.ndarray, real: RealData, split: Split, extractor: FeatureExtractor, *, k: int = 3,
                 quantile: float = 0.01, seed: int = 0) -> Scores:
    """Metrics of ``fake`` (uint8 N×C×S×S) and of the held-out real images, both against the reference set."""
    if fake.shape[1:] != real.images.shape[1:]:
        raise PipelineError(f"evaluate: generated images are {tuple(fake.shape[1:])}, real ones "
                            f"{tuple(real.images.shape[1:])} (channels, height, width)")
    held, ref = real.images[split.heldout], real.images[split.reference]
    f_ref, f_held, f_fake = extractor.features(ref), extractor.features(held), extractor.features(fake)
    p_held, p_fake = extractor.probs(held), extractor.probs(fake)

    threshold = memorization_threshold(real.images, quantile, seed)
    d_fake, nn_fake = nearest(fake, real.images)
    d_held, _ = nearest(held, ref)

    def row(f: np.ndarray, p: np.ndarray | None, d: np.ndarray) -> Metrics:
        prec, rec = precision_recall(f_ref, f, k)
        return Metrics(fld=frechet_distance(f, f_ref), score=None if p is None else classifier_score(p),
                       precision=prec, recall=rec, memorization=float((d <= threshold).mean()))

    order = np.argsort(d_fake, kind="stable")[:CLOSEST_SHOWN]
    copies = [Copy(int(i), int(nn_fake[i]), float(d_fake[i])) for i in order]
    return Scores(model=row(f_fake, p_fake, d_fake), floor=row(f_held, p_held, d_held), threshold=threshold, copies=copies)


# --------------------------------------------------------------------------------------------- 4b. prompts
def heldout_prompts(classes: list[str], n: int) -> tuple[list[str], np.ndarray]:
    """N prompts in phrasings no training caption used, cycling classes, then phrasings and class words."""
    from pipeline.models.text_encoder import HELDOUT_TEMPLATES, class_words

    prompts, targets = [], []
    for i in range(n):
        c, j = i % len(classes), i // len(classes)
        words = class_words(classes[c])
        prompts.append(HELDOUT_TEMPLATES[j % len(HELDOUT_TEMPLATES)].format(w=words[(j // len(HELDOUT_TEMPLATES)) % len(words)]))
        targets.append(c)
    return prompts, np.asarray(targets, np.int64)


@torch.inference_mode()
def prompt_accuracy(g: nn.Module, model: ModelSpec, extractor: FeatureExtractor, n: int, seed: int) -> dict[str, Any]:
    """Prompt-conditioned accuracy: the share of images generated from held-out phrasings that the
    domain classifier labels as the prompt's class (and how often the text encoder itself resolves it)."""
    from pipeline.models.text_encoder import VERSION, caption_classes

    classes = caption_classes(model, [])
    prompts, targets = heldout_prompts(classes, n)
    z = torch.randn(n, model.z_dim, generator=torch.Generator().manual_seed(seed + 1))
    out, resolved = [], []
    for i in range(0, n, SAMPLE_BATCH):
        post = g.prompt_posterior(prompts[i:i + SAMPLE_BATCH])
        resolved.append(post.argmax(1))
        x = g(z[i:i + SAMPLE_BATCH], cond=post @ g.embed.weight)
        out.append(((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8))
    probs = extractor.probs(torch.cat(out).numpy())
    return {"n": n, "phrasings": "held-out", "encoder": VERSION,
            "accuracy": float((probs.argmax(1) == targets).mean()),
            "encoder_accuracy": float((torch.cat(resolved).numpy() == targets).mean()),
            "example": prompts[: len(classes)]}


# --------------------------------------------------------------------------------------------- 5. results and gate
@dataclass
class EvalResult:
    """One evaluation of one model package at one N."""

    model_uri: str
    model_sha256: str
    n: int
    key: str
    extractor: dict[str, Any]
    data: dict[str, Any]
    settings: dict[str, Any]
    model: Metrics
    floor: Metrics
    threshold: float
    copies: list[Copy]
    seconds: float
    created_at: str
    uri: str = ""  # where the result JSON is
    skipped: bool = False  # read from an earlier evaluation
    prompts: dict[str, Any] | None = None  # text-conditioned generators: prompt_accuracy()

    def to_json(self) -> dict[str, Any]:
        return {"format": EVAL_FORMAT, "model_uri": absolute_uri(self.model_uri), "model_sha256": self.model_sha256, "n": self.n,
                "key": self.key, "extractor": self.extractor, "data": self.data, "settings": self.settings,
                "metrics": {"model": self.model.to_json(), "floor": self.floor.to_json()},
                "memorization": {"space": "pixel", "distance": "RMS per pixel, pixels in [0, 1]",
                                 "threshold": round(self.threshold, 6),
                                 "quantile": self.settings["memorization_quantile"],
                                 "closest": [dataclasses.asdict(c) for c in self.copies]},
                "seconds": round(self.seconds, 2), "created_at": self.created_at, "versions": package_versions(),
                **({"prompts": self.prompts} if self.prompts is not None else {})}

    @classmethod
    def from_json(cls, d: dict[str, Any], uri: str = "") -> EvalResult:
        m = d["metrics"]
        return cls(model_uri=d["model_uri"], model_sha256=d["model_sha256"], n=d["n"], key=d["key"],
                   extractor=d["extractor"], data=d["data"], settings=d["settings"], model=Metrics(**m["model"]),
                   floor=Metrics(**m["floor"]), threshold=d["memorization"]["threshold"],
                   copies=[Copy(**c) for c in d["memorization"].get("closest", [])], seconds=d["seconds"],
                   created_at=d["created_at"], uri=uri, prompts=d.get("prompts"))

    def summary(self) -> str:
        """One line for run summaries."""
        m, f = self.model, self.floor
        score = f", score {m.score:.2f} ({f.score:.2f})" if m.score is not None and f.score is not None else ""
        prompts = f", prompt accuracy {self.prompts['accuracy']:.1%} (held-out phrasings)" if self.prompts else ""
        return (f"N={self.n:,}: FLD {m.fld:.2f} ({fld_ratio(self):.2f}x the floor {f.fld:.2f}){score}, "
                f"P {m.precision:.2f} R {m.recall:.2f}, "
                f"memorization {m.memorization:.1%}{prompts}")

    def lines(self, gate: GateSpec | None = None) -> list[str]:
        """The metrics table, model beside floor, with the gate's thresholds."""
        g = gate or GateSpec()
        kind = self.extractor.get("kind", "?")
        out = [f"evaluate {self.model_uri}",
               f"  N={self.n:,} generated vs {self.data.get('reference', 0):,} reference images; floor: "
               f"{self.data.get('heldout', 0):,} held-out real images; {kind} features; seed {self.settings.get('seed')}",
               f"  {'metric':<13} {'model':>9} {'floor':>9} {'model/floor':>12}  gate"]

        def fmt(v: float | None, pct: bool) -> str:
            return "n/a" if v is None else (f"{v:.1%}" if pct else f"{v:.3f}")

        rows = [("FLD", "fld", False), ("score", "score", False), ("precision", "precision", False),
                ("recall", "recall", False), ("memorization", "memorization", True)]
        for label, attr, pct in rows:
            mv, fv = getattr(self.model, attr), getattr(self.floor, attr)
            ratio = f"{mv / fv:.2f}x" if mv is not None and fv else ""
            gate_txt = "; ".join(f"{op} {limit:g}{'x floor' if of_floor else ''}  {'ok' if ok else 'FAILED'}"
                                 for op, limit, of_floor, ok in gate_checks(self, g, attr))
            out.append(f"  {label:<13} {fmt(mv, pct):>9} {fmt(fv, pct):>9} {ratio:>12}  {gate_txt}".rstrip())
        if self.prompts is not None:
            p = self.prompts
            gate_txt = "" if g.min_prompt_accuracy is None else (
                f"  >= {g.min_prompt_accuracy:.1%}  " + ("ok" if _passes(p["accuracy"], g.min_prompt_accuracy, ">=") else "FAILED"))
            out.append(f"  {'prompt acc.':<13} {p['accuracy']:>9.1%} {'':>9} {'':>12}{gate_txt}".rstrip())
            out.append(f"  prompt accuracy: N={p['n']:,} images from {p['phrasings']} phrasings (e.g. "
                       f"\"{p['example'][min(7, len(p['example']) - 1)]}\"), labelled by the domain classifier; "
                       f"the text encoder alone resolves {p['encoder_accuracy']:.1%} of them")
        out.append(f"  memorization: nearest training image in pixel space closer than {self.threshold:.4f} RMS "
                   f"(the {self.settings['memorization_quantile']:g} quantile of real images' own NN distances)")
        return out


def fld_ratio(result: EvalResult) -> float:
    """The model's FLD over the floor's, NaN when either is missing or the floor is 0."""
    m, f = result.model.fld, result.floor.fld
    return m / f if m is not None and f else math.nan


def gate_checks(result: EvalResult, gate: GateSpec, attr: str) -> list[tuple[str, float, bool, bool]]:
    """The gate's thresholds on one metric row (``fld``, ``score``, ``memorization``), as
    ``(op, limit, of_floor, passed)``; ``of_floor``: the limit is a multiple of the floor's value."""
    limits = {"fld": [("<=", gate.max_fld, False), ("<=", gate.max_fld_ratio, True)],
              "score": [(">=", gate.min_score, False)],
              "memorization": [("<=", gate.max_memorization, False)]}.get(attr, [])
    value = getattr(result.model, attr)
    return [(op, limit, of_floor, _passes(fld_ratio(result) if of_floor else value, limit, op))
            for op, limit, of_floor in limits if limit is not None]


def _passes(value: float | None, limit: float, op: str) -> bool:
    if value is None or math.isnan(value):
        return False
    return value <= limit if op == "<=" else value >= limit


def gate_failures(result: EvalResult, gate: GateSpec) -> list[str]:
    """One phrase per failed threshold; empty when the gate passes (or sets no thresholds)."""
    if getattr(result, "kind", "image") == "text":  # a TextEvalResult (pipeline.evaluate_text)
        return result.gate_failures(gate)
    m, f = result.model, result.floor
    out = []
    if gate.max_fld is not None and not _passes(m.fld, gate.max_fld, "<="):
        out.append(f"FLD {m.fld:.2f} > evaluate.gate.max_fld {gate.max_fld:g} (real-vs-real floor {f.fld:.2f})")
    if gate.max_fld_ratio is not None and not _passes(fld_ratio(result), gate.max_fld_ratio, "<="):
        out.append(f"FLD {m.fld:.2f} is {fld_ratio(result):.2f}x the real-vs-real floor {f.fld:.2f} > "
                   f"evaluate.gate.max_fld_ratio {gate.max_fld_ratio:g}")
    if gate.min_score is not None and not _passes(m.score, gate.min_score, ">="):
        out.append(f"classifier score {m.score:.2f} < evaluate.gate.min_score {gate.min_score:g} (floor {f.score:.2f})")
    if gate.max_memorization is not None and not _passes(m.memorization, gate.max_memorization, "<="):
        out.append(f"memorization {m.memorization:.1%} of samples are near-copies of training images > "
                   f"evaluate.gate.max_memorization {gate.max_memorization:.1%}")
    p = result.prompts
    if gate.min_prompt_accuracy is not None and (p is None or not _passes(p["accuracy"], gate.min_prompt_accuracy, ">=")):
        out.append("no prompt accuracy (the model has no text encoder, or the data no labels)" if p is None else
                   f"prompt accuracy {p['accuracy']:.1%} < evaluate.gate.min_prompt_accuracy {gate.min_prompt_accuracy:.1%}")
    return out


def enforce_gate(result: EvalResult, gate: GateSpec) -> None:
    """Raise :class:`GateFailed` naming every failed threshold."""
    failed = gate_failures(result, gate)
    if failed:
        raise GateFailed(f"quality gate failed for {result.model_uri} at N={result.n:,}: " + "; ".join(failed))


def _check_config(spec: EvaluateSpec, kind: str, real: RealData, split: Split) -> None:
    """Settings that cannot work with this data, refused before anything is trained."""
    if spec.gate.max_perplexity is not None:
        raise PipelineError("evaluate.gate.max_perplexity: applies to text models; this is an image model "
                            "(gate it with max_fld, min_score or max_memorization)")
    if spec.gate.min_score is not None and kind != "classifier":
        why = "evaluate.extractor is 'autoencoder'" if real.labelled else f"{real.source} has no labels"
        raise PipelineError(f"evaluate.gate.min_score: the classifier score needs the classifier extractor, but the "
                            f"autoencoder runs here ({why}); remove min_score")
    smallest = min(split.n, len(split.reference))
    if spec.k >= smallest:
        raise PipelineError(f"evaluate.k: k={spec.k} needs more than {spec.k} samples per set, but the smallest set "
                            f"has {smallest}; lower evaluate.k or raise evaluate.samples")


# --------------------------------------------------------------------------------------------- entry points
def _model_data_spec(pkg: ModelPackage) -> DataSpec | None:
    raw = (pkg.meta.get("train") or {}).get("data")
    if raw is None:
        return None
    if isinstance(raw, dict) and isinstance(raw.get("uri"), str):  # the spec's own (maybe relative) path
        raw = {**raw, "uri": resolve_recorded(raw["uri"], pkg.uri)}
    try:
        return DataSpec.model_validate(raw)
    except ValidationError:
        return None


def _settings(spec: EvaluateSpec) -> dict[str, Any]:
    return {"seed": spec.seed, "k": spec.k, "memorization_quantile": spec.memorization_quantile,
            "extractor": spec.extractor}


def result_key(model_sha256: str, real: RealData, n: int, spec: EvaluateSpec) -> str:
    blob = json.dumps({"format": EVAL_FORMAT, "model": model_sha256, "data": real.fingerprint, "n": n,
                       **_settings(spec)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cached_result(out: Store, n: int, key: str) -> EvalResult | None:
    """The stored result for this N if it was computed with exactly these inputs (``key``), else None."""
    if not out.exists(result_name(n)):
        return None
    with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError, StorageError):
        prev = out.read_json(result_name(n))
        if prev.get("key") == key:
            res = EvalResult.from_json(prev, out.url(result_name(n)))
            res.skipped = True
            return res
    return None  # another model, other settings, or an unreadable file: compute it again


def evaluate_package(model_uri: str, spec: EvaluateSpec, *, data: DataSpec | None = None,
                     storage: StorageSpec | None = None, address: str | None = None,
                     generator: Callable[..., torch.Tensor] | None = None,
                     log: Callable[[str], None] = print) -> EvalResult:
    """Evaluate a model package at N = ``spec.samples``; reuse ``<package>.eval/n<N>.json`` when it matches.

    ``data`` is the real data (default: what the package's model.json names). ``generator`` replaces
    the package's G (tests use it for a "generator" that returns training images).
    """
    t0 = time.monotonic()
    pkg = load_package(model_uri, storage)
    if pkg.kind == "text":  # a byte-level GPT: held-out perplexity beside a unigram baseline
        from pipeline.evaluate_text import evaluate_text_package

        return evaluate_text_package(pkg, spec, data=data, storage=storage, log=log)
    data = data or _model_data_spec(pkg)
    if data is None:
        raise PipelineError(f"evaluate.data: the model package at {pkg.uri} does not say what data it was trained on; "
                            "set evaluate.data (or run with a job that has train.data)")
    real = real_data(data, pkg.config, storage, address)
    if real.count == 0:
        raise PipelineError(f"evaluate.data: {real.source} holds no images")
    kind = choose_extractor(spec.extractor, real)
    n = spec.samples
    split = split_real(real, n, spec.seed)
    _check_config(spec, kind, real, split)
    out = Store(eval_uri(pkg.uri), storage)
    key = result_key(pkg.model_sha256, real, n, spec)
    cached = _cached_result(out, n, key) if generator is None else None
    if cached is not None:
        return cached

    num_classes = max(int(real.labels.max(initial=-1)) + 1, pkg.config.num_classes if pkg.config.conditional else 0, 2)
    extractor = extractor_for(kind, real, split, num_classes, spec.seed, cache_uri=out.uri, storage=storage, log=log)
    g = generator or pkg.build_generator()
    fake = sample_images(g, pkg.config, n, spec.seed, sample_labels(real, split, pkg.config))
    scores = score_images(fake, real, split, extractor, k=spec.k, quantile=spec.memorization_quantile, seed=spec.seed)
    prompts = None
    if pkg.config.text_encoder is not None and kind == "classifier" and generator is None:
        prompts = prompt_accuracy(g, pkg.config, extractor, n, spec.seed)
    result = EvalResult(
        model_uri=pkg.uri, model_sha256=pkg.model_sha256, n=n, key=key,
        extractor={"kind": kind, "uri": extractor.uri,
                   **{k: extractor.meta.get(k) for k in ("trained_on", "heldout_accuracy", "heldout_mse", "key")
                      if k in extractor.meta}},
        data={"source": real.source, "fingerprint": real.fingerprint, "count": real.count,
              "reference": len(split.reference), "heldout": split.n, "labelled": real.labelled},
        settings=_settings(spec), model=scores.model, floor=scores.floor, threshold=scores.threshold,
        copies=scores.copies, seconds=time.monotonic() - t0,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), prompts=prompts)
    if generator is None:  # only a package's own G is cached under its name
        out.write(closest_name(n), closest_pairs_png(fake, real.images, scores.copies))
        out.write_json(result_name(n), result.to_json())  # last: the result is the commit point
        result.uri = out.url(result_name(n))
    return result


def closest_pairs_png(fake: np.ndarray, train: np.ndarray, copies: list[Copy]) -> bytes:
    """A two-row PNG: the generated samples closest to a training image (top) above those images."""
    from pipeline.train import grid_png

    if not copies:
        return grid_png(torch.zeros(1, *train.shape[1:]) - 1, nrow=1)
    top = to_float(fake[[c.sample for c in copies]])
    bottom = to_float(train[[c.train_index for c in copies]])
    return grid_png(torch.cat([top, bottom]), nrow=len(copies))


def model_uri_for(job: JobSpec) -> str:
    """The package a job's evaluate stage judges: evaluate.model, else the train stage's, else generate.model."""
    ev = job.evaluate
    if ev is not None and ev.model:
        return ev.model
    if job.train is not None:
        return train_package_uri(job)
    if job.generate is not None and job.generate.model:
        return job.generate.model
    raise PipelineError("evaluate.model: needed when the job has neither a train stage nor generate.model")


def run_evaluate(job: JobSpec, *, model_uri: str | None = None, samples: int | None = None,
                 address: str | None = None, log: Callable[[str], None] = print) -> EvalResult:
    """The evaluate stage of ``job`` (or the defaults when it has none). The gate is not applied here:
    call :func:`enforce_gate` with ``job.evaluate.gate``."""
    spec = job.evaluate or EvaluateSpec()
    if samples is not None:
        if samples <= 0:
            raise PipelineError(f"--samples: must be greater than 0, got {samples}")
        spec = spec.model_copy(update={"samples": samples})
    data = spec.data or (job.train.data if job.train is not None else None)
    return evaluate_package(model_uri or model_uri_for(job), spec, data=data, storage=job.storage,
                            address=address, log=log)


def read_results(package_uri: str, storage: StorageSpec | None = None) -> list[EvalResult]:
    """Every evaluation stored beside a package, by N."""
    store = Store(eval_uri(package_uri), storage)
    out = []
    for rel in store.list():
        if rel == "perplexity.json":  # a text model's (pipeline.evaluate_text)
            from pipeline.evaluate_text import TextEvalResult

            with contextlib.suppress(KeyError, TypeError, ValueError, StorageError):
                out.append(TextEvalResult.from_json(store.read_json(rel), store.url(rel)))
            continue
        if "/" in rel or not (rel.startswith("n") and rel.endswith(".json")):
            continue
        with contextlib.suppress(KeyError, TypeError, ValueError, StorageError):
            out.append(EvalResult.from_json(store.read_json(rel), store.url(rel)))
    return sorted(out, key=lambda r: r.n)
