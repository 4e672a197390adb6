"""What provenance costs, as ratios against the no-provenance baseline measured in the same run.

    .venv/bin/python benchmarks/provenance_cost.py            # N=4,000 per configuration and round
    .venv/bin/python benchmarks/provenance_cost.py --quick    # N=1,000

Three configurations of `generate.provenance`, interleaved round by round (median of the rounds):

* **baseline**: `{xmp: false}`, today's PNG text chunks only (what every PNG carried before issue 15);
* **XMP**: the section left out (the default): the chunks plus the XMP packet;
* **XMP + C2PA**: the default plus an Ed25519 C2PA signature over every PNG (a test chain from
  `pipeline.provenance.devcert`, no thumbnail, no timestamp authority).

(a) the image sampler the actors run (forward pass, watermark check, PNG, XMP, signature, Parquet row),
    in this process with one torch thread, no Ray: the cost of provenance itself;
(b) `aigc generate` end to end to local storage (2 actors x 0.5 CPU, shards of 1,000, commits and
    manifest), Ray started once before the timed runs.
Bytes: the mean PNG size of each configuration and the extra bytes per asset over the baseline.

Model: the classic 32x32 DCGAN generator (z=100, width 64), untrained (speed does not depend on
the weights), as in generate_throughput.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch
from common import MODEL, job_spec

from pipeline.families.dcgan.model import Generator
from pipeline.generate import run_generate
from pipeline.package import export_package, load_package
from pipeline.provenance import devcert
from pipeline.provenance.options import provenance_options
from pipeline.specs import validate_job

CHAIN_ENV, KEY_ENV = "AIGC_BENCH_C2PA_CHAIN", "AIGC_BENCH_C2PA_KEY"
CONFIGS = {
    "baseline (text chunks only)": {"xmp": False},
    "XMP": None,
    "XMP + C2PA": {"c2pa": {"cert_chain_env": CHAIN_ENV, "private_key_env": KEY_ENV}},
}


def spec(root: str, model_uri: str, n: int, name: str, provenance: dict | None):
    data = job_spec(root, model_uri, n, name).model_dump(mode="json", exclude_none=True)
    if provenance is not None:
        data["generate"]["provenance"] = provenance
    return validate_job(data, "benchmark")


def sampler_rate(model_uri: str, n: int, provenance: dict | None) -> tuple[float, float]:
    """(items/s, mean PNG bytes) of the actors' image sampler over ``n`` items, one torch thread."""
    from pipeline.catalog.registry import implementation
    from pipeline.generate.actor import ShardConfig
    from pipeline.generate.plan import ShardPlan, shard_items
    from pipeline.specs import StorageSpec

    torch.set_num_threads(1)
    pkg = load_package(model_uri)
    job = spec("/tmp", model_uri, n, "bench", provenance)
    cfg = ShardConfig(model_uri=model_uri, model_sha256=pkg.model_sha256, output="/tmp/unused",
                      storage=StorageSpec(), job="bench", job_seed=0, date="2026-01-01", formats=["png", "parquet"],
                      batch_size=256, threads=1, options=provenance_options(job.generate.provenance))
    sampler = implementation(pkg.config).sampler(pkg, cfg)
    items = shard_items(ShardPlan("s000000", start=0, count=n).row(), 0, sampler.seed_classes)
    t0 = time.perf_counter()
    sizes = []
    for lo in range(0, n, 256):
        for files, _row in sampler(items[lo:lo + 256], lambda item_id, ext: f"{item_id}.{ext}"):
            sizes.append(len(files["png"]))
    return n / (time.perf_counter() - t0), sum(sizes) / len(sizes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = 1000 if args.quick else 4000
    chain = devcert.make_chain()
    os.environ[CHAIN_ENV], os.environ[KEY_ENV] = chain.chain, chain.key
    tmp = Path(tempfile.mkdtemp(prefix="aigc-prov-bench-"))
    torch.manual_seed(0)
    model_uri = str(tmp / "model")
    export_package(model_uri, Generator(MODEL), MODEL, {"note": "benchmark, untrained"})

    print(f"provenance cost, N={n:,} per configuration and round, {args.rounds} rounds interleaved (medians)")
    rates: dict[str, list[float]] = {k: [] for k in CONFIGS}
    size: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, prov in CONFIGS.items():
            rate, mean = sampler_rate(model_uri, n, prov)
            rates[name].append(rate)
            size[name] = mean

    from pipeline.runtime import ensure_ray

    t0 = time.perf_counter()
    ensure_ray()
    ray_start = time.perf_counter() - t0
    e2e: dict[str, list[float]] = {k: [] for k in CONFIGS}
    for r in range(args.rounds):
        for i, (name, prov) in enumerate(CONFIGS.items()):
            res = run_generate(spec(str(tmp), model_uri, n, f"e2e-{r}-{i}", prov), date="2026-01-01", progress=False,
                               log=lambda line: None)
            e2e[name].append(res.items / res.seconds)

    base = "baseline (text chunks only)"
    b_rate, b_e2e, b_size = (statistics.median(rates[base]), statistics.median(e2e[base]), size[base])
    print(f"(Ray start-up, not timed below: {ray_start:.1f} s)")
    print("| configuration | (a) sampler items/s | ratio | (b) aigc generate items/s | ratio | bytes per PNG | "
          "extra bytes per asset |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in CONFIGS:
        a, e = statistics.median(rates[name]), statistics.median(e2e[name])
        print(f"| {name} | {a:,.0f} | {a / b_rate:.2f}x | {e:,.0f} | {e / b_e2e:.2f}x | {size[name]:,.0f} | "
              f"{size[name] - b_size:+,.0f} |")
    print("(a) rounds:", {k: [round(v) for v in vs] for k, vs in rates.items()})
    print("(b) rounds:", {k: [round(v) for v in vs] for k, vs in e2e.items()})
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
