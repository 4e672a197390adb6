"""Generation throughput, as ratios against baselines measured in the same run.

    .venv/bin/python benchmarks/generate_throughput.py            # N=20,000 (and 200,000 for RSS)
    .venv/bin/python benchmarks/generate_throughput.py --quick    # N=4,000, smaller RSS check

(a) `aigc generate` end to end to local storage vs a plain single-process loop doing the same
    forward + PNG encode + Parquet write (same model, same encoder, 2 torch threads).
(b) PNG-per-item to a moto S3 server on 127.0.0.1: the pipeline vs a serial one-PUT-per-object loop.
(c) peak RSS (driver + Ray workers) at N vs 10 N: the pipeline streams, so it should be flat.

Model: the classic 32x32 DCGAN generator (z=100, width 64), untrained (speed does not depend on
the weights). Ray is started once, before the timed runs; its start-up is reported separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch
from common import MODEL, RssSampler, job_spec

from pipeline.encode import logical_time, parquet_bytes
from pipeline.families.dcgan.model import Generator
from pipeline.generate import item_seed, run_generate, seed_item_id
from pipeline.image.png import SCHEMA, encode_png, provenance
from pipeline.localcluster import free_port
from pipeline.package import export_package, load_package
from pipeline.storage import sha256


def plain_loop(model_uri: str, out: Path, n: int, batch: int = 256) -> float:
    """The baseline: one process, 2 torch threads, forward + PNG + Parquet per 1000 items."""
    torch.set_num_threads(2)
    pkg = load_package(model_uri)
    g = pkg.build_model()
    created = logical_time("2026-01-01")
    t0 = time.perf_counter()
    for shard, lo in enumerate(range(0, n, 1000)):
        ids = list(range(lo, min(n, lo + 1000)))
        cols = {k: [] for k in SCHEMA.names}
        d = out / "images" / f"s{shard:06d}"
        d.mkdir(parents=True, exist_ok=True)
        for b in range(0, len(ids), batch):
            chunk = ids[b: b + batch]
            seeds = [item_seed(0, 0, i) for i in chunk]
            z = torch.stack([torch.randn(MODEL.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds])
            with torch.inference_mode():
                x = ((g(z) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
            for i, s, px in zip(chunk, seeds, x):
                iid = seed_item_id(i)
                png = encode_png(px, provenance(job="plain", item_id=iid, seed=s, model_sha256=pkg.model_sha256))
                (d / f"{iid}.png").write_bytes(png)
                for k, v in (("item_id", iid), ("seed", s), ("prompt", None), ("label", None),
                             ("image", {"bytes": png, "path": f"{iid}.png"}), ("png_sha256", sha256(png)),
                             ("width", 32), ("height", 32), ("model_sha256", pkg.model_sha256), ("job", "plain"),
                             ("created_at", created)):
                    cols[k].append(v)
        (out / "data").mkdir(exist_ok=True)
        (out / "data" / f"part-{shard:06d}.parquet").write_bytes(parquet_bytes(cols))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--s3-n", type=int, default=6_000)
    ap.add_argument("--only-s3", action="store_true", help="skip (a) and (c)")
    args = ap.parse_args()
    n = 4_000 if args.quick else args.n
    tmp = Path(tempfile.mkdtemp(prefix="aigc-bench-"))
    model_uri = str(tmp / "model")
    torch.manual_seed(0)
    export_package(model_uri, Generator(MODEL), MODEL, {"note": "benchmark, untrained"})

    from pipeline.runtime import ensure_ray

    t = time.perf_counter()
    ensure_ray(num_cpus=2)
    ray_start = time.perf_counter() - t
    print(f"ray start-up: {ray_start:.1f}s (not in the timed runs below)")

    # warm-up: actors, imports, page cache
    run_generate(job_spec(str(tmp / "warm"), model_uri, 2000, "warm"), date="2026-01-01", progress=False,
                 log=lambda *a: None)

    # (a) pipeline vs plain loop, local storage
    if args.only_s3:
        n = args.s3_n
    else:
        base_s = plain_loop(model_uri, tmp / "plain", n)
    t = time.perf_counter()
    res = run_generate(job_spec(str(tmp / "pipe"), model_uri, n, "pipe"), date="2026-01-01", progress=False,
                       log=lambda *a: None)
    assert res.items == n
    pipe_s = time.perf_counter() - t
    if not args.only_s3:
        print(f"(a) N={n:,}  plain loop {n / base_s:,.0f} img/s ({base_s:.1f}s)  |  pipeline {n / pipe_s:,.0f} img/s "
              f"({pipe_s:.1f}s, incl. publish)  |  ratio {base_s / pipe_s:.2f}x  (target >= 1.0x)")
        print(f"    pipeline incl. Ray start-up: {n / (pipe_s + ray_start):,.0f} img/s "
              f"({base_s / (pipe_s + ray_start):.2f}x)")

    # (b) S3: pipeline vs serial PUT loop, same PNG bytes
    port = free_port()
    moto = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        m = args.s3_n
        pngs = [p.read_bytes() for p in sorted((Path(res.output) / "images").rglob("*.png"))[:m]]
        assert len(pngs) == m
        t = time.perf_counter()
        for i, data in enumerate(pngs):
            s3.put_object(Bucket="bench", Key=f"serial/{i:08d}.png", Body=data)
        serial_s = time.perf_counter() - t
        t = time.perf_counter()
        run_generate(job_spec("s3://bench/pipe", model_uri, m, "s3pipe", {"endpoint": endpoint}),
                     date="2026-01-01", progress=False, log=lambda *a: None)
        s3_s = time.perf_counter() - t
        from pipeline.specs import StorageSpec
        from pipeline.storage import Store

        store = Store("s3://bench/bulk", StorageSpec(root="s3://bench/bulk", endpoint=endpoint))
        t = time.perf_counter()
        store.write_many({f"{i:08d}.png": data for i, data in enumerate(pngs)})
        bulk_s = time.perf_counter() - t
        print(f"(b) N={m:,}  serial PUT loop {m / serial_s:,.0f} obj/s  |  pipeline to s3:// {m / s3_s:,.0f} items/s "
              f"(PNG + Parquet + index + manifest)  |  ratio {serial_s / s3_s:.1f}x  (target >= 10x)")
        print(f"    the same PNGs with Store.write_many alone (concurrent PUTs): {m / bulk_s:,.0f} obj/s "
              f"({serial_s / bulk_s:.1f}x the serial loop)")
    finally:
        moto.terminate()
        moto.wait(10)

    # (c) peak RSS, N vs 10 N
    if not (args.skip_rss or args.only_s3):
        peaks = []
        for k in (n, 10 * n):
            with RssSampler() as rs:
                t = time.perf_counter()
                run_generate(job_spec(str(tmp / f"rss{k}"), model_uri, k, f"rss{k}"), date="2026-01-01",
                             progress=False, log=lambda *a: None)
                dt = time.perf_counter() - t
            peaks.append(rs.peak)
            print(f"    N={k:,}: {k / dt:,.0f} img/s, peak RSS {rs.peak / 2**20:,.0f} MiB")
            shutil.rmtree(tmp / f"rss{k}", ignore_errors=True)
        print(f"(c) peak RSS N={n:,}: {peaks[0] / 2**20:,.0f} MiB  |  N={10 * n:,}: {peaks[1] / 2**20:,.0f} MiB  |  "
              f"ratio {peaks[1] / peaks[0]:.2f}x  (target <= 1.10x)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
