"""Small-object uploads to S3: one PUT after another vs. `Store.write_many` (concurrent).

Starts its own moto S3 server on 127.0.0.1 (a free port), writes N ~1 KB PNG-sized objects once with
a plain serial loop (one `pipe_file` PUT per object, the baseline), once with boto3 `put_object` in
a serial loop, and once with `Store.write_many`, then prints objects/s for each and the ratio to the
baseline measured in the same run. All traffic stays on loopback; the server is stopped at the end.

    .venv/bin/python benchmarks/s3_small_objects.py            # N=2000
    .venv/bin/python benchmarks/s3_small_objects.py --n 500 --concurrency 64
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

# Credentials for the throwaway local server only; no metadata lookups off the machine.
os.environ.update(AWS_ACCESS_KEY_ID="bench-key", AWS_SECRET_ACCESS_KEY="bench-secret",
                  AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true")

import boto3  # noqa: E402

from pipeline.localcluster import free_port  # noqa: E402
from pipeline.specs import Credentials, StorageSpec  # noqa: E402
from pipeline.storage import Store  # noqa: E402


def start_moto() -> tuple[subprocess.Popen, str]:
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.terminate()
    raise SystemExit("moto_server did not start")


def payload(i: int, size: int) -> bytes:
    body = hashlib.sha256(str(i).encode()).digest() * (size // 32 + 1)
    return b"\x89PNG\r\n\x1a\n" + body[: size - 8]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="objects per run")
    ap.add_argument("--size", type=int, default=1000, help="bytes per object")
    ap.add_argument("--concurrency", type=int, default=32, help="storage.max_concurrency for write_many")
    args = ap.parse_args()

    proc, endpoint = start_moto()
    try:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bench")
        spec = StorageSpec(root="s3://bench/run", endpoint=endpoint, region="us-east-1",
                           max_concurrency=args.concurrency,
                           credentials=Credentials(access_key_env="AWS_ACCESS_KEY_ID",
                                                   secret_key_env="AWS_SECRET_ACCESS_KEY"))
        store = Store(spec.root, spec)
        store.write("warmup.bin", b"x")  # connection pool and event loop up before timing
        client.put_object(Bucket="bench", Key="warmup.bin", Body=b"x")

        def files(tag: str) -> dict[str, bytes]:
            return {f"{tag}/{i:06d}.png": payload(i, args.size) for i in range(args.n)}

        results: dict[str, float] = {}

        serial = files("serial")
        t0 = time.perf_counter()
        for rel, data in serial.items():  # the baseline: one PUT after another
            store.fs.pipe_file(store.path(rel), data)
        results["serial pipe_file"] = args.n / (time.perf_counter() - t0)

        serial_boto = files("serial-boto3")
        t0 = time.perf_counter()
        for rel, data in serial_boto.items():
            client.put_object(Bucket="bench", Key=f"run/{rel}", Body=data)
        results["serial boto3 put_object"] = args.n / (time.perf_counter() - t0)

        bulk = files("write_many")
        t0 = time.perf_counter()
        store.write_many(bulk)
        results[f"Store.write_many (max_concurrency={args.concurrency})"] = args.n / (time.perf_counter() - t0)

        for tag in ("serial", "serial-boto3", "write_many"):
            landed = len(store.list(tag))
            assert landed == args.n, f"{tag}: {landed} of {args.n} objects landed"

        base = results["serial pipe_file"]
        print(f"S3 small objects: N={args.n}, {args.size} B each, moto server at {endpoint}")
        for name, rate in results.items():
            print(f"  {name:<42} {rate:8.1f} objects/s   {rate / base:5.2f}x baseline")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
