"""Model quality you can measure and gate: FLD, classifier score, precision/recall and memorization,
each at a fixed N and each beside the same metric for real data (the real-vs-real floor).

    aigc evaluate outputs/models/demo/<version> [--job jobs/demo.yaml] [--samples 1000]

or as the ``evaluate:`` stage of a job, which ``aigc run`` runs between train and generate: a
failing ``evaluate.gate`` raises :class:`~pipeline.errors.GateFailed` and nothing is generated.

How an evaluation runs (all of it seeded by ``evaluate.seed``, so a rerun gives the same figures):

1. **Real data.** The model's training data (``evaluate.data``, else ``train.data``, else what the
   package's ``model.json`` names) at the model's size and channels, as uint8 arrays. A seeded
   permutation holds out N = ``evaluate.samples`` images; the rest is the *reference* set. With a
   test split (``evaluate.heldout``: images the model never trained on), the reference set is all
   of the training data instead and the N held-out images are drawn (seeded) from the test split.
2. **Features.** No Inception weights can be downloaded here, so, as TF-GAN's
   ``mnist_frechet_distance`` does, a small LeNet-style classifier
   (:mod:`pipeline.models.classifier`) is trained on the labelled reference set; its 128-d
   penultimate layer gives the features, its softmax the class probabilities. Unlabelled data
   gets a small convolutional autoencoder instead (its 128-d code are the features, and there is
   no classifier score). The extractor is trained once (one thread: bit-identical weights for any
   model evaluated on the same data) and stored as a pickle-free package (safetensors + JSON,
   manifest, ``_SUCCESS``) in ``<package>.eval/extractor/<key>/``, keyed by the data fingerprint
   and the split. Its held-out accuracy is measured on the whole test split when there is one.
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
   * **per class** (labelled data, classifier features): precision, recall and memorization of each
     class's samples against that class's reference images, the floor row grouped by the held-out
     labels. A conditional G's samples are grouped by the label they were generated with, an
     unconditional G's by the domain classifier's predicted class. And the class distribution:
     the classifier's predictions on the generated samples against the held-out images' labels,
     as a Jensen–Shannon divergence (bits), a total variation and the worst-covered class (the
     lowest generated/real share ratio), beside the same for the classifier's predictions on the
     held-out images.
5. **Result** in ``<package>.eval/n<N>.json`` (a sibling of the package, so ``aigc verify`` of the
   package stays clean), with a picture of the closest generated/training pairs. A rerun with the
   same package, N and settings reads it instead of computing it again. The gate is checked on
   every call, since its thresholds may change.
"""


from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import time
from typing import Any, Callable

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.image.data import Reader
from pipeline.image.features import choose_extractor, extractor_for
from pipeline.image.grid import grid_png
from pipeline.image.metrics import Copy, prompt_accuracy, sample_images, sample_labels, score_images
from pipeline.image.realdata import RealData, Split, real_data, split_real, split_test, to_float
from pipeline.image.result import KEY_FORMAT, EvalResult
from pipeline.layout import eval_uri
from pipeline.specs.schema import DataSpec, EvaluateSpec, StorageSpec
from pipeline.storage import StorageError, Store


def result_name(n: int) -> str:
    return f"n{n}.json"


def closest_name(n: int) -> str:
    return f"n{n}-closest.png"


def _check_config(spec: EvaluateSpec, kind: str, real: RealData, split: Split) -> None:
    """Settings that cannot work with this data, refused before anything is trained."""
    if spec.gate.min_score is not None and kind != "classifier":
        why = "evaluate.extractor is 'autoencoder'" if real.labelled else f"{real.source} has no labels"
        raise PipelineError(f"evaluate.gate.min_score: the classifier score needs the classifier extractor, but the "
                            f"autoencoder runs here ({why}); remove min_score")
    smallest = min(split.n, len(split.reference))
    if spec.k >= smallest:
        raise PipelineError(f"evaluate.k: k={spec.k} needs more than {spec.k} samples per set, but the smallest set "
                            f"has {smallest}; lower evaluate.k or raise evaluate.samples")


def _settings(spec: EvaluateSpec) -> dict[str, Any]:
    return {"seed": spec.seed, "k": spec.k, "memorization_quantile": spec.memorization_quantile,
            "extractor": spec.extractor}


def result_key(model_sha256: str, real: RealData, n: int, spec: EvaluateSpec, test_fingerprint: str = "") -> str:
    """What identifies an evaluation: model, data (``real``: the training data's fingerprint), N, settings and,
    with a test split, its fingerprint (left out without one, so the keys of earlier evaluations stand)."""
    blob = json.dumps({"format": KEY_FORMAT, "model": model_sha256, "data": real.fingerprint, "n": n,
                       **({"heldout": test_fingerprint} if test_fingerprint else {}), **_settings(spec)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cached_result(out: Store, n: int, key: str, per_class: bool) -> EvalResult | None:
    """The stored result for this N if it was computed with exactly these inputs (``key``) and holds every figure
    this evaluation gives (``per_class``: per-class figures, which aigc-eval/1 files lack), else None."""
    if not out.exists(result_name(n)):
        return None
    with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError, StorageError):
        prev = out.read_json(result_name(n))
        if prev.get("key") == key and (prev.get("classes") is not None or not per_class):
            res = EvalResult.from_json(prev, out.url(result_name(n)))
            res.skipped = True
            res.closest_png = out.read(closest_name(n)) if out.exists(closest_name(n)) else None
            return res
    return None  # another model, other settings, or an unreadable file: compute it again


def evaluate_images(pkg: Any, spec: EvaluateSpec, *, data: DataSpec | None = None,
                    storage: StorageSpec | None = None, address: str | None = None,
                    generator: Callable[..., torch.Tensor] | None = None,
                    extra_metrics: Callable[[Any, RealData, Split], dict[str, dict]] | None = None,
                    published: Callable[[np.ndarray], np.ndarray] | None = None,
                    reader: Reader | None = None, log: Callable[[str], None] = print) -> EvalResult:
    """Evaluate an image model package at N = ``spec.samples``; reuse ``<package>.eval/n<N>.json`` when it matches.

    ``data`` is the real data (default: what the package's model.json names). ``generator`` replaces
    the package's G (tests use it for a "generator" that returns training images). ``extra_metrics(pkg,
    real, split)`` adds a family's own figures (:attr:`EvalResult.extra`), stored with the rest.
    ``published(images) -> images`` maps G's uint8 samples to the picture of what is published, when
    that is not the picture itself (an audio family: the log-mel picture of the WAV it writes);
    ``reader`` reads the real data of another modality (:func:`pipeline.image.data.load_data`).
    """
    t0 = time.monotonic()
    data = data or pkg.trained_on()
    if data is None:
        raise PipelineError(f"evaluate.data: the model package at {pkg.uri} does not say what data it was trained on; "
                            "set evaluate.data (or run with a job that has train.data)")
    real = train = real_data(data, pkg.config, storage, address, reader)
    if real.count == 0:
        raise PipelineError(f"evaluate.data: {real.source} holds no images")
    n = spec.samples
    if spec.heldout is not None:  # a test split: the floor's N come from it, the training data is the reference
        test = real_data(spec.heldout, pkg.config, storage, address, reader, section="evaluate.heldout")
        if test.count == 0:
            raise PipelineError(f"evaluate.heldout: {test.source} holds no images")
        real, split = split_test(train, test, n, spec.seed)
    else:
        split = split_real(real, n, spec.seed)
    kind = choose_extractor(spec.extractor, real)
    _check_config(spec, kind, real, split)
    out = Store(eval_uri(pkg.uri), storage)
    key = result_key(pkg.model_sha256, train, n, spec, split.test_fingerprint)
    cached = _cached_result(out, n, key, per_class=kind == "classifier") if generator is None else None
    if cached is not None:
        return cached

    num_classes = max(int(real.labels.max(initial=-1)) + 1,
                      pkg.config.num_classes if getattr(pkg.config, "conditional", False) else 0, 2)
    extractor = extractor_for(kind, real, split, num_classes, spec.seed, cache_uri=out.uri, storage=storage, log=log)
    g = generator or pkg.build_model()
    labels = sample_labels(real, split, pkg.config)
    fake = sample_images(g, pkg.config, n, spec.seed, labels)
    if published is not None:
        fake = published(fake)
    scores = score_images(fake, real, split, extractor, k=spec.k, quantile=spec.memorization_quantile, seed=spec.seed,
                          fake_labels=labels if real.labelled else None)
    prompts = None
    if getattr(pkg.config, "text_encoder", None) is not None and kind == "classifier" and generator is None:
        prompts = prompt_accuracy(g, pkg.config, extractor, n, spec.seed, published)
    result = EvalResult(
        model_uri=pkg.uri, model_sha256=pkg.model_sha256, n=n, key=key,
        extractor={"kind": kind, "uri": extractor.uri,
                   **{k: extractor.meta.get(k) for k in ("trained_on", "heldout_accuracy", "heldout_mse", "key",
                                                          "heldout_on", "heldout_count") if k in extractor.meta}},
        data={"source": train.source, "fingerprint": train.fingerprint, "count": train.count,
              "reference": len(split.reference), "heldout": split.n, "labelled": real.labelled,
              **({"split": "test", "test_source": split.test_source, "test_fingerprint": split.test_fingerprint,
                  "test_count": len(split.test)} if split.tested else {})},
        settings=_settings(spec), model=scores.model, floor=scores.floor, threshold=scores.threshold,
        copies=scores.copies, seconds=time.monotonic() - t0,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), prompts=prompts,
        classes=scores.classes,
        extra=extra_metrics(pkg, real, split) if extra_metrics is not None else {},
        closest_png=closest_pairs_png(fake, real.images, scores.copies))
    if generator is None:  # only a package's own G is cached under its name
        out.write(closest_name(n), result.closest_png)
        out.write_json(result_name(n), result.to_json())  # last: the result is the commit point
        result.uri = out.url(result_name(n))
    return result


def closest_pairs_png(fake: np.ndarray, train: np.ndarray, copies: list[Copy]) -> bytes:
    """A two-row PNG: the generated samples closest to a training image (top) above those images."""
    if not copies:
        return grid_png(torch.zeros(1, *train.shape[1:]) - 1, nrow=1)
    top = to_float(fake[[c.sample for c in copies]])
    bottom = to_float(train[[c.train_index for c in copies]])
    return grid_png(torch.cat([top, bottom]), nrow=len(copies))


def read_results(package_uri: str, storage: StorageSpec | None = None) -> list[EvalResult]:
    """Every evaluation stored beside a package, by N."""
    store = Store(eval_uri(package_uri), storage)
    out = []
    for rel in store.list():
        if "/" in rel or not (rel.startswith("n") and rel.endswith(".json")):
            continue
        with contextlib.suppress(KeyError, TypeError, ValueError, StorageError):
            res = EvalResult.from_json(store.read_json(rel), store.url(rel))
            res.closest_png = store.read(closest_name(res.n)) if store.exists(closest_name(res.n)) else None
            out.append(res)
    return sorted(out, key=lambda r: r.n)
