"""Audio generation throughput in clips/s, as a ratio against a plain single-process loop measured in the
same run.

    .venv/bin/python benchmarks/audio_throughput.py              # N=2,000 clips
    .venv/bin/python benchmarks/audio_throughput.py --n 400      # quicker
    .venv/bin/python benchmarks/audio_throughput.py --model outputs/models/audio-demo/<version>

* plain: one process, no Ray, 2 torch threads, doing the actors' work: the audio sampler (G's
  forward, the Griffin-Lim inverse, the WAV with LIST/INFO and XMP, the Parquet row), one Parquet
  part per shard and the local writes;
* pipeline: ``aigc generate`` (Ray Data, 2 actors of one torch thread each, shards of 250, commits,
  manifest, publish) to local storage, with Ray started once beforehand (its start-up reported apart).

Model: the demo's SpecGAN architecture (64x64 log-mel, g_width 16), untrained unless ``--model``
names a package (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch

from pipeline.catalog.registry import implementation, parse_config
from pipeline.encode import parquet_bytes
from pipeline.families.dcgan.model import Generator
from pipeline.generate import run_generate
from pipeline.package import export_package, load_package
from pipeline.specs import validate_job

SHARD = 250
BATCH = 50


def plain(model_uri: str, out: Path, n: int) -> float:
    """Seconds for the plain loop (model load included, as an actor's)."""
    from pipeline.generate.actor import ShardConfig
    from pipeline.generate.plan import ShardPlan, shard_items
    from pipeline.layout import asset_path, part_path
    from pipeline.specs import StorageSpec

    t0 = time.perf_counter()
    torch.set_num_threads(2)
    pkg = load_package(model_uri)
    cfg = ShardConfig(model_uri=model_uri, model_sha256=pkg.model_sha256, output=str(out), storage=StorageSpec(),
                      job="plain", job_seed=0, date="2026-01-01", formats=["wav", "parquet"], batch_size=BATCH,
                      threads=2)
    sampler = implementation(pkg.config).sampler(pkg, cfg)
    for k, lo in enumerate(range(0, n, SHARD)):
        shard = f"s{k:06d}"
        items = shard_items(ShardPlan(shard, start=lo, count=min(SHARD, n - lo)).row(), 0, sampler.seed_classes)
        rows = []
        for b in range(0, len(items), BATCH):
            chunk = items[b: b + BATCH]
            for (own, row), item in zip(sampler(chunk, lambda i, e: asset_path(shard, i, e)), chunk):
                path = out / asset_path(shard, item.item_id, "wav")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(own["wav"])
                rows.append(row)
        (out / part_path(shard)).parent.mkdir(parents=True, exist_ok=True)
        (out / part_path(shard)).write_bytes(parquet_bytes({c: [r[c] for r in rows] for c in sampler.schema.names},
                                                           sampler.schema))
    return time.perf_counter() - t0


def pipeline(model_uri: str, root: Path, n: int, name: str) -> float:
    job = validate_job({"name": name, "storage": {"root": str(root)},
                        "generate": {"model": model_uri, "seeds": {"count": n}, "shard_size": SHARD,
                                     "output": "{root}/{name}", "formats": ["wav", "parquet"],
                                     "scaling": {"num_actors": 2, "num_cpus": 0.5, "batch_size": BATCH}}}, "bench")
    t = time.perf_counter()
    res = run_generate(job, date="2026-01-01", progress=False, log=lambda *a: None)
    assert res.items == n
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", help="a specgan package (default: an untrained one of the demo's architecture)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="aigc-audio-bench-"))
    model_uri = args.model
    if model_uri is None:
        cfg = parse_config({"arch": "specgan", "z_dim": 64, "g_width": 16, "d_width": 16, "conditional": True,
                            "g_upsample": "nearest"})
        torch.manual_seed(0)
        model_uri = str(tmp / "model")
        export_package(model_uri, Generator(cfg), cfg, {"note": "benchmark, untrained"})

    from pipeline.runtime import ensure_ray

    t = time.perf_counter()
    ensure_ray(num_cpus=2)
    ray_start = time.perf_counter() - t
    one, pipe = [], []
    for r in range(args.rounds):  # interleaved, so a slow spell of the machine hits both
        one.append(plain(model_uri, tmp / f"plain-{r}", args.n))
        pipe.append(pipeline(model_uri, tmp, args.n, f"pipe-{r}"))
    one_s, pipe_s = statistics.median(one), statistics.median(pipe)
    print(f"audio generation, N={args.n:,} 1-s clips at 16 kHz (WAV + Parquet), median of {args.rounds}:")
    print(f"  plain loop (1 process x 2 threads): {args.n / one_s:,.1f} clips/s ({one_s:.1f} s)")
    print(f"  pipeline (2 actors x 1 thread, shards of {SHARD}): {args.n / pipe_s:,.1f} clips/s ({pipe_s:.1f} s, "
          f"actor start and publish included; Ray start-up {ray_start:.1f} s apart)")
    print(f"  ratio pipeline / plain: {one_s / pipe_s:.2f}x")
    print("  rounds (s): plain " + " ".join(f"{x:.1f}" for x in one) + " | pipeline "
          + " ".join(f"{x:.1f}" for x in pipe))
    return 0


if __name__ == "__main__":
    sys.exit(main())
