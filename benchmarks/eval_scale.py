"""The image evaluation's metrics at the customary N = 10,000 against a 60,000-image reference set (a
Fashion-MNIST-sized training split), against the same code at N = 1,000 / 6,000 measured in the same run.

    .venv/bin/python benchmarks/eval_scale.py                 # both sizes, 3 rounds each, interleaved
    .venv/bin/python benchmarks/eval_scale.py --rounds 1 --sizes 1000:6000,10000:60000

Each size runs in a fresh process (so each peak RSS is its own), with synthetic but class-structured
32x32 grey images (10 class prototypes + noise, labels 0..9), the layout of a test split
(``evaluate.heldout``: the reference set is the whole training split, N held-out images drawn from the
test split), and an untrained LeNet-style domain classifier as the feature extractor (its training,
done once per data set and cached, is not timed here). It times :func:`score_images`: features of all
sets, the k-NN manifolds (k = 3), Fréchet distances, the memorization threshold and the pixel nearest
neighbours of 2N images against the training split, and the per-class figures. Prints each size's
median time and peak RSS (the process's ``ru_maxrss``; the data alone is reported beside it) and the
ratios of the large size to the small one; CPU seconds beside wall seconds, since on a shared box the
wall time mostly measures the neighbours.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

CLASSES = 10
SIZE = 32


def synthetic(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (count, 1, 32, 32) images: one of 10 smooth prototypes plus noise, and their labels."""
    rng = np.random.default_rng(1234)  # the same prototypes for every set
    protos = rng.uniform(0, 255, (CLASSES, 1, 8, 8)).repeat(4, 2).repeat(4, 3)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    images = np.empty((count, 1, SIZE, SIZE), np.uint8)
    for lo in range(0, count, 5000):
        y = labels[lo:lo + 5000]
        noise = rng.normal(0, 40, (len(y), 1, SIZE, SIZE))
        images[lo:lo + 5000] = np.clip(protos[y] + noise, 0, 255).astype(np.uint8)
    return images, labels


def one(n: int, m: int) -> dict:
    """Score N generated images and N held-out images against a reference set of m, in this process."""
    from pipeline.image.features import FeatureExtractor
    from pipeline.image.metrics import score_images
    from pipeline.image.realdata import RealData, split_test
    from pipeline.models.classifier import DigitClassifier

    x_train, y_train = synthetic(m, 1)
    x_test, y_test = synthetic(n, 2)
    fake, _ = synthetic(n, 3)
    train = RealData(images=x_train, labels=y_train, source="train", fingerprint="a")
    test = RealData(images=x_test, labels=y_test, source="test", fingerprint="b")
    real, split = split_test(train, test, n, 0)
    del x_train, x_test
    torch.manual_seed(0)
    ex = FeatureExtractor(kind="classifier", net=DigitClassifier(SIZE, 1, CLASSES).eval(), meta={})
    data_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    s = score_images(fake, real, split, ex, k=3, quantile=0.01, seed=0)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    peak = after.ru_maxrss * 1024
    return {"n": n, "m": m, "seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak, "data_rss": data_rss,
            "fld": s.model.fld, "js": s.classes["distribution"]["model"]["js"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000:6000,10000:60000", help="N:reference pairs; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        n, m = map(int, args.one.split(":"))
        print(json.dumps(one(n, m)))
        return
    sizes = args.sizes.split(",")
    runs: dict[str, list[dict]] = {s: [] for s in sizes}
    for r in range(args.rounds):  # interleaved, so a busy spell hits both sizes
        for size in sizes:
            out = subprocess.run([sys.executable, __file__, "--one", size], capture_output=True, text=True, check=True)
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            runs[size].append(rec)
            print(f"round {r + 1}: N={rec['n']:,} vs {rec['m']:,}: {rec['seconds']:.1f} s ({rec['cpu_seconds']:.1f} "
                  f"CPU-s), peak RSS "
                  f"{rec['peak_rss'] / 2**20:,.0f} MiB (data alone {rec['data_rss'] / 2**20:,.0f} MiB)", flush=True)
    base = sizes[0]
    b_t = statistics.median(r["seconds"] for r in runs[base])
    b_m = statistics.median(r["peak_rss"] for r in runs[base])
    b_c = statistics.median(r["cpu_seconds"] for r in runs[base])
    print(f"\n{'N vs reference':<20} {'median s':>9} {'CPU-s':>8} {'peak RSS MiB':>13} {'data MiB':>9} "
          f"{'time ratio':>11} {'CPU ratio':>10} {'RSS ratio':>10} {'pairs ratio':>12}")
    for size in sizes:
        t = statistics.median(r["seconds"] for r in runs[size])
        c = statistics.median(r["cpu_seconds"] for r in runs[size])
        mem = statistics.median(r["peak_rss"] for r in runs[size])
        data = statistics.median(r["data_rss"] for r in runs[size])
        n, m = map(int, size.split(":"))
        bn, bm = map(int, base.split(":"))
        print(f"{n:,} vs {m:,}".ljust(20) + f" {t:>9.1f} {c:>8.1f} {mem / 2**20:>13,.0f} {data / 2**20:>9,.0f} "
              f"{t / b_t:>10.1f}x {c / b_c:>9.1f}x {mem / b_m:>9.2f}x {n * m / (bn * bm):>11.0f}x")
    big = sizes[-1]
    n, m = map(int, big.split(":"))
    print(f"\none N x reference float64 distance matrix at {n:,} x {m:,} would be {n * m * 8 / 2**30:.1f} GiB "
          f"(float32 {n * m * 4 / 2**30:.1f} GiB); the blocks here hold at most 64 MB of distances each")


if __name__ == "__main__":
    main()
