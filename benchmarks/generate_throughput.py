"""Generation throughput, as ratios against baselines measured in the same run.

    .venv/bin/python benchmarks/generate_throughput.py            # N=20,000 (and 200,000 for RSS)
    .venv/bin/python benchmarks/generate_throughput.py --quick    # N=4,000, smaller RSS check

(a) `aigc generate` end to end to local storage vs plain loops doing the same work: the image
    sampler the actors run (forward, PNG with provenance, the Parquet row), the Parquet part per
    shard and the local writes, without Ray:
    * one process with 2 torch threads (the earlier baseline);
    * the ceiling of 2 cores: two processes with one thread each, each doing half the shards.
    For the classic DCGAN below and, with --demo-model URI, for the demo's generator.
(b) to a moto S3 server on 127.0.0.1 that counts the requests it answers: a serial one-PUT-per-PNG loop vs
    the pipeline with [png, parquet] (one object per item) and with [webdataset, parquet] (one tar per
    shard); items/s ratios and PUT-class requests per 1,000 items.
(c) peak RSS (driver + Ray workers) at N vs 10 N: the pipeline streams, so it should be flat.

Model: the classic 32x32 DCGAN generator (z=100, width 64), untrained (speed does not depend on
the weights). Ray is started once, before the timed runs; its start-up is reported separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch
from common import MODEL, RssSampler, job_spec

from pipeline.encode import parquet_bytes
from pipeline.families.dcgan.model import Generator
from pipeline.generate import run_generate
from pipeline.localcluster import free_port
from pipeline.package import export_package, load_package


def _plain(model_uri: str, out: str, n: int, threads: int, part: int, parts: int, batch: int, done) -> None:
    """Every ``parts``-th shard of 1,000 items from ``part`` on: the actors' sampler and files, no Ray.
    Puts the seconds from after its imports (the model load included, as an actor's) to its last file."""
    t0 = time.perf_counter()
    from pipeline.catalog.registry import implementation
    from pipeline.generate.actor import ShardConfig
    from pipeline.generate.plan import ShardPlan, shard_items
    from pipeline.layout import asset_path, part_path
    from pipeline.specs import StorageSpec

    torch.set_num_threads(threads)
    pkg = load_package(model_uri)
    cfg = ShardConfig(model_uri=model_uri, model_sha256=pkg.model_sha256, output=out, storage=StorageSpec(),
                      job="plain", job_seed=0, date="2026-01-01", formats=["png", "parquet"], batch_size=batch,
                      threads=threads)
    sampler = implementation(pkg.config).sampler(pkg, cfg)
    root = Path(out)
    for shard_no, lo in enumerate(range(0, n, 1000)):
        if shard_no % parts != part:
            continue
        shard = f"s{shard_no:06d}"
        items = shard_items(ShardPlan(shard, start=lo, count=min(1000, n - lo)).row(), 0, sampler.seed_classes)
        rows = []
        for b in range(0, len(items), batch):
            for (own, row), item in zip(sampler(items[b: b + batch], lambda i, e: asset_path(shard, i, e)),
                                        items[b: b + batch]):
                path = root / asset_path(shard, item.item_id, "png")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(own["png"])
                rows.append(row)
        (root / part_path(shard)).parent.mkdir(parents=True, exist_ok=True)
        (root / part_path(shard)).write_bytes(parquet_bytes({k: [r[k] for r in rows] for k in sampler.schema.names},
                                                            sampler.schema))
    done.put(time.perf_counter() - t0)


def plain_loop(model_uri: str, out: Path, n: int, processes: int = 1, threads: int = 2,
               batch: int = 256) -> tuple[float, float]:
    """``processes`` plain processes with ``threads`` torch threads each, splitting the shards: (seconds of
    the slowest from after its imports, seconds from spawning them to the last one's exit)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    done = ctx.Queue()
    procs = [ctx.Process(target=_plain, args=(model_uri, str(out), n, threads, k, processes, batch, done))
             for k in range(processes)]
    t = time.perf_counter()
    for p in procs:
        p.start()
    seconds = [done.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a plain process failed (exit {p.exitcode})")
    return max(seconds), time.perf_counter() - t


def compare(label: str, model_uri: str, tmp: Path, n: int, ray_start: float, rounds: int = 1) -> None:
    """(a) for one model: both plain baselines and the pipeline, in this order, ``rounds`` times; medians."""
    one, two, two_spawn, pipe = [], [], [], []
    for r in range(rounds):
        one.append(plain_loop(model_uri, tmp / f"plain1-{label}-{r}", n, processes=1, threads=2)[0])
        steady, spawned = plain_loop(model_uri, tmp / f"plain2-{label}-{r}", n, processes=2, threads=1)
        two.append(steady)
        two_spawn.append(spawned)
        t = time.perf_counter()
        name = f"pipe-{label.replace(' ', '-')}-{r}"
        res = run_generate(job_spec(str(tmp / name), model_uri, n, name), date="2026-01-01",
                           progress=False, log=lambda *a: None)
        assert res.items == n
        pipe.append(time.perf_counter() - t)
        for d in (f"plain1-{label}-{r}", f"plain2-{label}-{r}", name):
            shutil.rmtree(tmp / d, ignore_errors=True)
    one_s, two_s, spawn_s, pipe_s = (statistics.median(x) for x in (one, two, two_spawn, pipe))
    print(f"(a) {label}, N={n:,}, median of {rounds}: one process x 2 threads {n / one_s:,.0f} img/s  |  two "
          f"processes x 1 thread (the ceiling) {n / two_s:,.0f} img/s from after their imports, {n / spawn_s:,.0f} "
          f"img/s from spawn  |  pipeline {n / pipe_s:,.0f} img/s (actor start and publish included)")
    print(f"    pipeline / one process: {one_s / pipe_s:.2f}x  |  pipeline / two-process ceiling: "
          f"{two_s / pipe_s:.2f}x after imports, {spawn_s / pipe_s:.2f}x with process start on both sides "
          f"(target >= 0.9x)  |  with Ray start-up ({ray_start:.1f}s): {spawn_s / (pipe_s + ray_start):.2f}x")
    print("    rounds (s): one " + " ".join(f"{x:.2f}" for x in one) + " | two " + " ".join(f"{x:.2f}" for x in two) +
          " | two from spawn " + " ".join(f"{x:.2f}" for x in two_spawn) + " | pipeline " +
          " ".join(f"{x:.2f}" for x in pipe))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--s3-n", type=int, default=6_000)
    ap.add_argument("--only-s3", action="store_true", help="skip (a) and (c)")
    ap.add_argument("--skip-s3", action="store_true", help="skip (b)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (a), interleaved; medians")
    ap.add_argument("--demo-model", help="also compare with this package (e.g. outputs/models/demo/<version>)")
    args = ap.parse_args()
    n = 4_000 if args.quick else args.n
    tmp = Path(tempfile.mkdtemp(prefix="aigc-bench-"))
    model_uri = str(tmp / "model")
    torch.manual_seed(0)
    export_package(model_uri, Generator(MODEL), MODEL, {"note": "benchmark, untrained"})

    from pipeline.runtime import ensure_ray

    t = time.perf_counter()
    ensure_ray(num_cpus=2, dashboard=False)  # as `aigc generate` starts an embedded Ray
    ray_start = time.perf_counter() - t
    print(f"ray start-up: {ray_start:.1f}s without the dashboard, as `aigc generate` starts it (not in the timed runs "
          "below)")

    # warm-up: actors, imports, page cache
    run_generate(job_spec(str(tmp / "warm"), model_uri, 2000, "warm"), date="2026-01-01", progress=False,
                 log=lambda *a: None)

    # (a) pipeline vs plain loops, local storage
    if args.only_s3:
        n = args.s3_n
        res = run_generate(job_spec(str(tmp / "pipe"), model_uri, n, "pipe"), date="2026-01-01", progress=False,
                           log=lambda *a: None)
    else:
        compare("classic DCGAN", model_uri, tmp, n, ray_start, args.rounds)
        if args.demo_model:
            compare("demo generator", args.demo_model, tmp, n, ray_start, args.rounds)
        if not args.skip_s3:  # the PNGs the S3 comparison puts
            res = run_generate(job_spec(str(tmp / "pipe-classic-DCGAN"), model_uri, n, "pipe-classic-DCGAN"),
                               date="2026-01-01", progress=False, log=lambda *a: None)

    # (b) S3: pipeline vs serial PUT loop, same PNG bytes
    if not args.skip_s3:
        s3_compare(model_uri, res, n, args.s3_n)
    # (c) peak RSS, N vs 10 N
    if not (args.skip_rss or args.only_s3):
        rss_compare(model_uri, tmp, n)
    shutil.rmtree(tmp, ignore_errors=True)


def s3_compare(model_uri: str, res, n: int, s3_n: int) -> None:
    """(b) on one moto server that counts what it answers: the serial PUT loop, then the pipeline with
    PNG + Parquet (one object per item), then with WebDataset + Parquet (one tar per shard)."""
    import json
    import urllib.request

    port = free_port()
    moto = subprocess.Popen([sys.executable, str(Path(__file__).with_name("moto_counting.py")), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"

    def counts(reset: bool = False) -> dict[str, int]:
        req = urllib.request.Request(f"{endpoint}/_counts" + ("/reset" if reset else ""),
                                     method="POST" if reset else "GET")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
        import boto3

        from pipeline.specs import StorageSpec
        from pipeline.storage import Store

        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        m = min(s3_n, n)
        pngs = [p.read_bytes() for p in sorted((Path(res.output) / "images").rglob("*.png"))[:m]]
        assert len(pngs) == m
        s3.put_object(Bucket="bench", Key="warmup", Body=b"x")  # connection up before timing
        counts(reset=True)
        t = time.perf_counter()
        for i, data in enumerate(pngs):
            s3.put_object(Bucket="bench", Key=f"serial/{i:08d}.png", Body=data)
        serial_s = time.perf_counter() - t
        runs = {"serial PUT loop": (serial_s, counts(), None)}
        layouts = (("png + parquet", ["png", "parquet"]), ("webdataset + parquet", ["webdataset", "parquet"]))
        for label, formats in layouts:
            name = "s3-" + formats[0]
            counts(reset=True)
            t = time.perf_counter()
            run_generate(job_spec(f"s3://bench/{name}", model_uri, m, name, {"endpoint": endpoint}, formats=formats),
                         date="2026-01-01", progress=False, log=lambda *a: None)
            seconds = time.perf_counter() - t
            seen = counts()
            manifest = Store(f"s3://bench/{name}/{name}", StorageSpec(endpoint=endpoint)).read_json("manifest.json")
            runs[f"pipeline, {label}"] = (seconds, seen, (manifest.get("usage") or {}).get("requests"))
        store = Store("s3://bench/bulk", StorageSpec(root="s3://bench/bulk", endpoint=endpoint))
        counts(reset=True)
        t = time.perf_counter()
        store.write_many({f"{i:08d}.png": data for i, data in enumerate(pngs)})
        bulk_s = time.perf_counter() - t
        bulk_seen, bulk_client = counts(), store.requests()
        # the storage path alone, request-aware: the same PNGs as tars of 1,000 (one PUT per shard)
        from pipeline.webdataset import tar_bytes

        tars = {f"{lo // 1000:06d}.tar": tar_bytes([(f"{i:08d}.png", pngs[i]) for i in range(lo, min(lo + 1000, m))],
                                                   0) for lo in range(0, m, 1000)}
        counts(reset=True)
        t = time.perf_counter()
        Store("s3://bench/tars", StorageSpec(root="s3://bench/tars", endpoint=endpoint)).write_many(tars)
        tar_s = time.perf_counter() - t
        tar_seen = counts()
    finally:
        moto.terminate()
        moto.wait(10)
    print(f"(b) N={m:,} to one moto S3 server on 127.0.0.1 (the same PNG bytes; the pipeline's times include actor "
          "start, Parquet, shard indexes, manifest)")
    for label, (seconds, seen, client) in runs.items():
        writes = seen["PUT"] + seen["POST"]  # PutObject, UploadPart | Create/CompleteMultipartUpload
        line = (f"    {label:<34} {m / seconds:7,.0f} items/s  {serial_s / seconds:5.1f}x the serial loop  |  "
                f"PUT-class requests per 1,000 items {writes * 1000 / m:8.1f}  (server saw: "
                + ", ".join(f"{k} {v:,}" for k, v in seen.items() if v) + ")")
        if client:
            line += "  | manifest: " + ", ".join(f"{k} {v:,}" for k, v in client.items() if v)
        print(line)
    print("    target: the tar layout >= 10x the serial loop")
    print(f"    the same PNGs with Store.write_many alone (a window of 32 PUTs): {m / bulk_s:,.0f} obj/s "
          f"({serial_s / bulk_s:.1f}x the serial loop); server saw PUT {bulk_seen['PUT']:,}, the store counted "
          f"PUT {bulk_client['PUT']:,}")
    print(f"    the same PNGs as {len(tars)} tars of 1,000, Store.write_many (upload only): {m / tar_s:,.0f} items/s "
          f"({serial_s / tar_s:.1f}x the serial loop); server saw PUT {tar_seen['PUT']:,}")


def rss_compare(model_uri: str, tmp: Path, n: int) -> None:
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


if __name__ == "__main__":
    main()
