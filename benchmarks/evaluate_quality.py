"""Quality figures of a trained model against its baselines, all at the same N (the README's table).

    .venv/bin/aigc train jobs/demo.yaml
    .venv/bin/python benchmarks/evaluate_quality.py outputs/models/demo/<version> --samples 1000 \
        --grid docs/quality-grid.png

Prints FLD, classifier score, precision, recall and memorization for

* the real-vs-real floor (held-out real images vs the reference set),
* the trained model,
* an untrained G of the same architecture (DCGAN init, seed 0),
* a broken G (every weight zeroed: one flat gray image),
* a "generator" that returns training images (what the memorization check must flag),

each with its FLD as a ratio to the floor measured in the same run. ``--grid`` writes a 10x10 grid
of the trained model's samples (one class per column) for the README. ``--calibrate`` also scores
held-out real images under known perturbations (noise, shifts, blur, contrast), to show what a
given FLD ratio means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.evaluate import evaluate_package
from pipeline.families.dcgan.model import Generator
from pipeline.image.features import load_extractor
from pipeline.image.metrics import score_images
from pipeline.image.realdata import real_data, split_real
from pipeline.package import export_package, load_package
from pipeline.specs import EvaluateSpec


class TrainingImages(torch.nn.Module):
    """A 'generator' that ignores z and returns training images, cycling through them."""

    def __init__(self, images: np.ndarray):
        super().__init__()
        self.images = torch.from_numpy(images).float().div(127.5).sub(1.0)
        self.next = 0

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        idx = (torch.arange(len(z)) + self.next) % len(self.images)
        self.next += len(z)
        return self.images[idx]


def baseline_package(src, root: Path, name: str, zero: bool) -> str:
    """A package with src's architecture and model.json data, untrained (seed 0) or with zeroed weights."""
    torch.manual_seed(0)
    g = Generator(src.config)
    if zero:
        with torch.no_grad():
            for p in g.parameters():
                p.zero_()
    uri = str(root / name)
    export_package(uri, g, src.config, {"train": src.meta.get("train", {}), "note": f"{name} baseline"})
    return uri


def grid(pkg_uri: str, path: str) -> None:
    from pipeline.image.grid import grid_png

    pkg = load_package(pkg_uri)
    g = pkg.build_model()
    z = torch.randn(100, pkg.config.z_dim, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(100) % pkg.config.num_classes if pkg.config.conditional else None
    with torch.inference_mode():
        x = g(z, labels)
    Path(path).write_bytes(grid_png(x, nrow=10))
    print(f"grid: {path}")


def calibrate(pkg, spec: EvaluateSpec, extractor_uri: str) -> None:
    """Score perturbed held-out real images against the same reference set and extractor."""
    import torch.nn.functional as F

    real = real_data(_data_spec(pkg), pkg.config, reader=_reader(pkg))
    split = split_real(real, spec.samples, spec.seed)
    ex = load_extractor(extractor_uri)
    held = real.images[split.heldout].astype(np.float64)
    rng = np.random.default_rng(0)
    blurred = F.conv2d(F.pad(torch.from_numpy(held).float(), (1, 1, 1, 1), mode="replicate"),
                       torch.ones(held.shape[1], 1, 3, 3) / 9, groups=held.shape[1]).numpy()
    cases = {"noise 20/255": held + rng.normal(0, 20, held.shape), "noise 40/255": held + rng.normal(0, 40, held.shape),
             "blur 3x3": blurred, "shift 1 px": np.roll(held, 1, axis=3), "shift 2 px": np.roll(held, 2, axis=3),
             "contrast x0.8": held * 0.8}
    floor = None
    print(f"\nheld-out real images, perturbed (N = {spec.samples:,}):")
    for name, x in cases.items():
        s = score_images(np.clip(np.round(x), 0, 255).astype(np.uint8), real, split, ex, k=spec.k)
        floor = floor or s.floor.fld
        m = s.model
        print(f"{name:<18}{m.fld:>9.2f}{m.fld / floor:>10.2f}x{m.score:>8.2f}{m.precision:>11.3f}{m.recall:>8.3f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="trained model package URI")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--grid", help="write a 10x10 sample grid PNG here")
    ap.add_argument("--json", help="write all figures as JSON here")
    ap.add_argument("--calibrate", action="store_true", help="also score perturbed real images")
    args = ap.parse_args()

    spec = EvaluateSpec(samples=args.samples)
    trained = load_package(args.model)
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="aigc-quality-") as tmp:
        root = Path(tmp)
        candidates = {"trained": args.model, "untrained": baseline_package(trained, root, "untrained", zero=False),
                      "zeroed": baseline_package(trained, root, "zeroed", zero=True)}
        for name, uri in candidates.items():
            t0 = time.monotonic()
            res = evaluate_package(uri, spec, log=lambda s: print(s, file=sys.stderr))
            results[name] = res
            rows.append((name, res.model, time.monotonic() - t0))
        # the copy "generator": held-out images' own classes, pixels straight from the training set
        real = real_data(_data_spec(trained), trained.config, reader=_reader(trained))
        copier = TrainingImages(real.images)
        res = evaluate_package(args.model, spec, generator=copier, log=lambda s: print(s, file=sys.stderr))
        rows.append(("training images", res.model, 0.0))
        inverse = _through_the_inverse(trained, spec, real, results["trained"].extractor["uri"])
        if inverse is not None:
            rows.append(("real, published", inverse[0], 0.0))
        extractor_shas = {hashlib.sha256(Path(r.extractor["uri"], "extractor.safetensors").read_bytes()).hexdigest()
                          for r in results.values()}

    first = results["trained"]
    floor = first.floor
    print(f"\nN = {first.n:,} samples vs {first.data['reference']:,} reference images ({first.data['source']}), "
          f"{first.extractor['kind']} features (held-out accuracy {first.extractor.get('heldout_accuracy')}), "
          f"memorization threshold {first.threshold:.4f} RMS/pixel")
    print(f"{'':<18}{'FLD':>9}{'FLD/floor':>11}{'score':>8}{'precision':>11}{'recall':>8}{'memorized':>11}")
    for name, m, _ in [("real-vs-real floor", floor, 0.0), *rows]:
        score = "n/a" if m.score is None else f"{m.score:.2f}"
        print(f"{name:<18}{m.fld:>9.2f}{m.fld / floor.fld:>10.2f}x{score:>8}{m.precision:>11.3f}{m.recall:>8.3f}"
              f"{m.memorization:>10.1%}")
    print(f"feature extractor identical across packages: {len(extractor_shas) == 1}")
    if inverse is not None:
        print(f"classifier accuracy on held-out real samples: {inverse[1]:.1%} as they are, {inverse[2]:.1%} as "
              "published (through the family's inverse: the ceiling of prompt accuracy)")
    for name, res in results.items():
        if res.prompts:
            print(f"prompt accuracy ({name}, held-out phrasings, N={res.prompts['n']:,}): "
                  f"{res.prompts['accuracy']:.1%} (text encoder alone {res.prompts['encoder_accuracy']:.1%})")
    if args.json:
        Path(args.json).write_text(json.dumps({"floor": floor.to_json(), **{n: m.to_json() for n, m, _ in rows},
                                               "n": first.n, "threshold": first.threshold}, indent=1))
    if args.calibrate:
        calibrate(trained, spec, first.extractor["uri"])
    if args.grid:
        grid(args.model, args.grid)
    return 0


def _through_the_inverse(pkg, spec: EvaluateSpec, real, extractor_uri: str):
    """For a family that publishes something else than G's picture (audio: the WAV's log-mel picture), the
    held-out real samples as they would be published: (their metrics, classifier accuracy before, after)."""
    from pipeline.catalog.registry import implementation

    published = getattr(implementation(pkg.config), "published", None)
    if published is None or not real.labelled:
        return None
    split = split_real(real, spec.samples, spec.seed)
    ex = load_extractor(extractor_uri)
    held, labels = real.images[split.heldout], real.labels[split.heldout]
    through = published(held, pkg.config)
    s = score_images(through, real, split, ex, k=spec.k, quantile=spec.memorization_quantile, seed=spec.seed)
    return (s.model, float((ex.probs(held).argmax(1) == labels).mean()),
            float((ex.probs(through).argmax(1) == labels).mean()))


def _reader(pkg):
    """The family's own data reader (an audio family's), or None for image data."""
    from pipeline.catalog.registry import implementation

    return getattr(implementation(pkg.config), "reader", None)


def _data_spec(pkg):
    from pipeline.specs import DataSpec

    return DataSpec.model_validate(pkg.meta["train"]["data"])


if __name__ == "__main__":
    sys.exit(main())
