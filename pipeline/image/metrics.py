"""The image metrics, each computed for the generated set and, as the floor, for held-out real images:

* ``fld``: Fréchet distance between Gaussians fitted to the domain features (FID with a domain network);
* ``score``: classifier score, exp(E_x KL(p(y|x) || p(y))), the Inception Score with the domain
  classifier, one split of N; at most the number of classes;
* ``precision``/``recall``: k-NN manifolds of Kynkäänniemi et al. 2019 in feature space;
* ``memorization``: the share of samples whose nearest training image is closer in pixel space than
  a threshold, the ``evaluate.memorization_quantile`` quantile of real images' own
  nearest-neighbour distances to the *other* training images;
* prompt-conditioned accuracy, for a generator with a text encoder, on held-out phrasings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.image.features import FeatureExtractor
from pipeline.image.realdata import RealData, Split, train_images
from pipeline.models.text_encoder import HELDOUT_TEMPLATES, VERSION, class_words, phrasing

# `model` below is an image family's configuration: its z_dim and, when conditional, num_classes and
# text_encoder are what is read.
ModelSpec = Any

SAMPLE_BATCH = 256
MAX_THRESHOLD_QUERIES = 5000  # real images whose NN distance sets the memorization threshold
CLOSEST_SHOWN = 8


@torch.inference_mode()
def sample_images(generator: Callable[..., torch.Tensor], model: ModelSpec, n: int, seed: int,
                  labels: np.ndarray | None = None) -> np.ndarray:
    """N uint8 images from ``generator(z, labels)``, rounded exactly as published assets are."""
    z = torch.randn(n, model.z_dim, generator=torch.Generator().manual_seed(seed))
    y = (torch.from_numpy(np.asarray(labels, np.int64))
         if getattr(model, "conditional", False) and labels is not None else None)
    out = []
    for i in range(0, n, SAMPLE_BATCH):
        x = generator(z[i:i + SAMPLE_BATCH], y[i:i + SAMPLE_BATCH] if y is not None else None)
        out.append(((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out).numpy()


def sample_labels(real: RealData, split: Split, model: ModelSpec) -> np.ndarray | None:
    """Labels for a conditional G: the held-out images' labels (same class mix as the floor)."""
    if not getattr(model, "conditional", False):
        return None
    if not real.labelled:
        return np.arange(split.n, dtype=np.int64) % model.num_classes
    labels = real.labels[split.heldout]
    if labels.max(initial=0) >= model.num_classes:
        raise PipelineError(f"evaluate.data: {real.source} has label {int(labels.max())}, but the model knows only "
                            f"{model.num_classes} classes (train.model.num_classes)")
    return labels


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


BLOCK = 8_000_000  # distance-matrix elements per block (64 MB of float64): memory stays bounded at any N


def _d2(x: torch.Tensor, xx: torch.Tensor, y: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between float64 row blocks, given their squared norms."""
    d2 = torch.addmm(xx[:, None] + yy[None, :], x, y.T, alpha=-2)
    # Rounding leaves ~1e-16 where a row equals a base row; an identical image must read 0, not 1e-8
    # (the smallest real difference, one gray level in one pixel of 64x64x3, is 1.2e-9 squared).
    return d2.masked_fill_(d2 < 1e-13, 0.0)


def _rows(a: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.from_numpy(np.ascontiguousarray(a, np.float64))
    return t, (t * t).sum(1)


def _distances(q: np.ndarray, base: np.ndarray) -> Iterator[tuple[int, torch.Tensor]]:
    """Euclidean distances from row blocks of ``q`` to all of ``base`` (small feature vectors): (offset, block).
    Each block holds at most :data:`BLOCK` distances, so no query × base matrix is ever whole."""
    x, xx = _rows(q)
    y, yy = _rows(base)
    chunk = max(16, BLOCK // max(len(base), 1))
    for lo in range(0, len(x), chunk):
        yield lo, _d2(x[lo:lo + chunk], xx[lo:lo + chunk], y, yy).sqrt_()


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest other point of the same set (blocks; k smallest kept)."""
    if len(features) <= k:
        raise PipelineError(f"evaluate.k: k={k} needs more than {k} samples, got {len(features)}")
    out = np.empty(len(features))
    for lo, d in _distances(features, features):
        rows = torch.arange(len(d))
        d[rows, lo + rows] = math.inf  # not itself
        out[lo:lo + len(d)] = d.topk(k, dim=1, largest=False).values[:, k - 1].numpy()
    return out


def manifold_coverage(query: np.ndarray, base: np.ndarray, radii: np.ndarray) -> float:
    """Share of ``query`` points inside some ball (``base[j]``, ``radii[j]``)."""
    if not len(query):
        return math.nan
    inside, r = 0, torch.from_numpy(np.asarray(radii, np.float64))[None, :]
    for _, d in _distances(query, base):
        inside += int((d <= r).any(1).sum())
    return inside / len(query)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                     real_radii: np.ndarray | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds; ``real_radii``:
    :func:`knn_radii` of ``real``, when already computed (the model's row and the floor's share it)."""
    precision = manifold_coverage(fake, real, knn_radii(real, k) if real_radii is None else real_radii)
    recall = manifold_coverage(real, fake, knn_radii(fake, k))
    return precision, recall


def _pixel_rows(images: np.ndarray) -> torch.Tensor:
    """uint8 images → float64 rows scaled so that Euclidean distance is the RMS difference per pixel in [0, 1]."""
    flat = torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1)).to(torch.float64)
    return flat.div_(255.0 * math.sqrt(flat.shape[1]))


def nearest(query: np.ndarray, base: np.ndarray, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(RMS pixel distance, index) of each query image's nearest ``base`` image (both uint8 N×C×S×S).

    ``exclude[i]`` is a base index query i must not match (leave-one-out). Both sets are walked in
    blocks converted on the fly, so memory stays bounded for large RGB datasets: at most ~64 MB of
    query rows, of base rows and of distances at a time (the base is converted once per query block).
    """
    n, m = len(query), len(base)
    dim = int(np.prod(base.shape[1:]))
    q_chunk = max(64, min(2048, 8_000_000 // dim))
    b_chunk = max(64, min(4096, 8_000_000 // dim))
    best, idx = np.full(n, np.inf), np.zeros(n, np.int64)
    for qlo in range(0, n, q_chunk):
        x = _pixel_rows(query[qlo:qlo + q_chunk])
        xx = (x * x).sum(1)
        rows = torch.arange(len(x))
        for blo in range(0, m, b_chunk):
            y = _pixel_rows(base[blo:blo + b_chunk])
            yy = (y * y).sum(1)
            d2 = _d2(x, xx, y, yy)
            if exclude is not None:
                own = torch.from_numpy(exclude[qlo:qlo + len(x)] - blo)
                hit = (own >= 0) & (own < len(y))
                d2[rows[hit], own[hit]] = math.inf
            v, j = d2.min(1)  # the first of equal minima: ties keep the lower index
            v, j = v.numpy(), j.numpy()
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
    classes: dict[str, Any] | None = None  # per-class figures (labelled data, classifier features): class_figures()


def score_images(fake: np.ndarray, real: RealData, split: Split, extractor: FeatureExtractor, *, k: int = 3,
                 quantile: float = 0.01, seed: int = 0, fake_labels: np.ndarray | None = None) -> Scores:
    """Metrics of ``fake`` (uint8 N×C×S×S) and of the held-out real images, both against the reference set;
    memorization against the images G trained on. ``fake_labels``: the labels a conditional G generated
    them with (the per-class figures group by them; else by the domain classifier's predicted class)."""
    if fake.shape[1:] != real.images.shape[1:]:
        raise PipelineError(f"evaluate: generated images are {tuple(fake.shape[1:])}, real ones "
                            f"{tuple(real.images.shape[1:])} (channels, height, width)")
    held, ref = real.images[split.heldout], real.images[split.reference]
    f_ref, f_held, f_fake = extractor.features(ref), extractor.features(held), extractor.features(fake)
    p_held, p_fake = extractor.probs(held), extractor.probs(fake)
    radii = knn_radii(f_ref, k)  # the reference manifold, shared by both rows

    trained = train_images(real, split)
    threshold = memorization_threshold(trained, quantile, seed)
    d_fake, nn_fake = nearest(fake, trained)
    nn_fake = split.train[nn_fake]  # indices into RealData
    d_held, _ = nearest(held, ref)

    def row(f: np.ndarray, p: np.ndarray | None, d: np.ndarray) -> Metrics:
        prec, rec = precision_recall(f_ref, f, k, real_radii=radii)
        return Metrics(fld=frechet_distance(f, f_ref), score=None if p is None else classifier_score(p),
                       precision=prec, recall=rec, memorization=float((d <= threshold).mean()))

    order = np.argsort(d_fake, kind="stable")[:CLOSEST_SHOWN]
    copies = [Copy(int(i), int(nn_fake[i]), float(d_fake[i])) for i in order]
    classes = None
    if real.labelled and p_fake is not None and p_held is not None:
        y_held, y_ref = real.labels[split.heldout], real.labels[split.reference]
        classes = class_figures(
            ref=(f_ref, y_ref), model=(f_fake, p_fake, d_fake, fake_labels if fake_labels is not None else
                                       p_fake.argmax(1)),
            floor=(f_held, p_held, d_held, y_held), real_labels=y_held, threshold=threshold, k=k,
            names=real.classes, grouped_by="generation label" if fake_labels is not None else "predicted class")
    return Scores(model=row(f_fake, p_fake, d_fake), floor=row(f_held, p_held, d_held), threshold=threshold,
                  copies=copies, classes=classes)


# --------------------------------------------------------------------------------------------- per class
def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence of two distributions, in bits: 0 when equal, 1 when disjoint."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return max(0.0, (kl(p) + kl(q)) / 2)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance of two distributions: the share of mass that must move, in [0, 1]."""
    return float(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum() / 2)


def class_distribution(predicted: np.ndarray, real_share: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Shares of classes ``predicted`` (by the domain classifier) against the real shares: the Jensen–Shannon
    divergence, the total variation and the worst-covered class (lowest predicted/real share ratio)."""
    share = np.bincount(predicted, minlength=len(real_share))[:len(real_share)] / max(len(predicted), 1)
    present = np.nonzero(real_share > 0)[0]
    ratio = share[present] / real_share[present]
    worst = int(present[np.argmin(ratio)])  # argmin: the first of equal ratios, the lowest label
    return share, {"js": round(js_divergence(share, real_share), 6),
                   "tv": round(total_variation(share, real_share), 6),
                   "worst": worst, "worst_ratio": round(float(ratio.min()), 6)}


def _group_figures(f_ref: np.ndarray, radii: np.ndarray | None, f: np.ndarray, d: np.ndarray, threshold: float,
                   k: int) -> dict[str, Any]:
    """Precision, recall and memorization of one class's samples against that class's reference images."""
    out: dict[str, Any] = {"count": len(f), "precision": None, "recall": None, "memorization": None}
    if not len(f):
        out["recall"] = 0.0  # nothing drawn: none of the class's variety covered
        return out
    out["memorization"] = round(float((d <= threshold).mean()), 6)
    if radii is None:  # k or fewer reference images of the class: no manifold to be inside
        return out
    out["precision"] = round(manifold_coverage(f, f_ref, radii), 6)
    # k or fewer samples span no manifold: they cover none of the class's variety
    out["recall"] = round(manifold_coverage(f_ref, f, knn_radii(f, k)), 6) if len(f) > k else 0.0
    return out


def class_figures(*, ref: tuple[np.ndarray, np.ndarray], model: tuple, floor: tuple, real_labels: np.ndarray,
                  threshold: float, k: int, names: list[str], grouped_by: str) -> dict[str, Any]:
    """Per class: precision, recall and memorization of the generated samples (grouped by ``grouped_by``) and,
    as the floor, of the held-out images (grouped by their labels), each against the class's reference images
    with the class's own k-NN manifold; and the class distribution the domain classifier sees in each set
    against the held-out labels' (:func:`class_distribution`).

    ``ref`` = (features, labels); ``model`` and ``floor`` = (features, probabilities, pixel NN distances,
    group labels)."""
    f_ref, y_ref = ref
    classes = model[1].shape[1]
    real_share = np.bincount(real_labels, minlength=classes)[:classes] / max(len(real_labels), 1)
    dist, rows = {}, []
    shares = {}
    for which, (f, p, d, group) in (("model", model), ("floor", floor)):
        shares[which], dist[which] = class_distribution(p.argmax(1), real_share)
    present = sorted(set(np.unique(y_ref).tolist()) | set(np.unique(real_labels).tolist()))
    for c in present:
        in_ref = y_ref == c
        radii = knn_radii(f_ref[in_ref], k) if in_ref.sum() > k else None
        row: dict[str, Any] = {"label": int(c), "name": names[c] if c < len(names) else str(c),
                               "real_share": round(float(real_share[c]) if c < classes else 0.0, 6),
                               "reference": int(in_ref.sum())}
        for which, (f, p, d, group) in (("model", model), ("floor", floor)):
            mine = np.asarray(group) == c
            row[which] = {"share": round(float(shares[which][c]) if c < classes else 0.0, 6),
                          **_group_figures(f_ref[in_ref], radii, f[mine], d[mine], threshold, k)}
        rows.append(row)
    for which in dist:
        w = dist[which]["worst"]
        dist[which]["worst_name"] = names[w] if w < len(names) else str(w)
    return {"grouped_by": grouped_by, "k": k, "distribution": dist, "rows": rows}


def heldout_prompts(classes: list[str], n: int,
                    templates: tuple[str, ...] = HELDOUT_TEMPLATES) -> tuple[list[str], np.ndarray]:
    """N prompts in phrasings no training caption used, cycling classes, then phrasings and class words."""
    prompts, targets = [], []
    for i in range(n):
        c, j = i % len(classes), i // len(classes)
        words = class_words(classes[c])
        prompts.append(templates[j % len(templates)].format(w=words[(j // len(templates)) % len(words)]))
        targets.append(c)
    return prompts, np.asarray(targets, np.int64)


@torch.inference_mode()
def prompt_accuracy(g: nn.Module, model: ModelSpec, extractor: FeatureExtractor, n: int, seed: int,
                    published: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Prompt-conditioned accuracy: the share of images generated from held-out phrasings that the
    domain classifier labels as the prompt's class (and how often the text encoder itself resolves it).
    ``published`` maps the uint8 samples to what is published (see :func:`sample_images`)."""
    te = model.text_encoder  # the package records its class names (with_classes at export)
    classes = list(te.classes) if te.classes else [str(i) for i in range(model.num_classes)]
    prompts, targets = heldout_prompts(classes, n, phrasing(model)[1])
    z = torch.randn(n, model.z_dim, generator=torch.Generator().manual_seed(seed + 1))
    out, resolved = [], []
    for i in range(0, n, SAMPLE_BATCH):
        post = g.prompt_posterior(prompts[i:i + SAMPLE_BATCH])
        resolved.append(post.argmax(1))
        x = g(z[i:i + SAMPLE_BATCH], cond=post @ g.embed.weight)
        out.append(((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8))
    images = torch.cat(out).numpy()
    probs = extractor.probs(published(images) if published is not None else images)
    return {"n": n, "phrasings": "held-out", "encoder": VERSION,
            "accuracy": float((probs.argmax(1) == targets).mean()),
            "encoder_accuracy": float((torch.cat(resolved).numpy() == targets).mean()),
            "example": prompts[: len(classes)]}
