"""The GPU check: every figure a GPU machine should give, as ratios, in one run of a few minutes.

    benchmarks/gpu_check.sh              # on a machine with one CUDA GPU (about 5-8 minutes)
    benchmarks/gpu_check.sh --dry-run    # the same code paths on the CPU at tiny sizes (tests run this)

1. **Training**: Ray Train with 1 GPU worker and mixed precision (bf16 autocast, or fp16 with the
   GradScaler and R1 through it) against a plain single-process loop of the same model, batch and
   GAN step under the same autocast. Steady-state images/s (the first epoch skipped).
2. **Generation**: ``aigc generate`` with 2 actors sharing the GPU (0.5 GPU and 0.5 CPU each)
   against the forward-only ceiling of the same generator at the same batch size on the same GPU.
3. **Byte identity on the GPU**: 1 actor vs 2 actors at a fixed batch size give the same files,
   checksum for checksum (cuDNN is deterministic in the actors: benchmark off, deterministic on).
4. **Peak GPU memory** of the plain training loop and of the forward ceiling.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import torch

from pipeline.families.dcgan.loop import build_models, gan_step, make_optimizers
from pipeline.families.dcgan.model import Generator
from pipeline.image.data import digits_arrays, to_float
from pipeline.package import export_package, load_package
from pipeline.specs import ModelSpec, validate_job
from pipeline.storage import Store
from pipeline.train.driver import train
from pipeline.train.worker import epoch_indices

MODEL = {"image_size": 32, "z_dim": 100, "g_width": 64, "d_width": 64, "conditional": True}


def train_job(root: str, epochs: int, batch: int, gpu: bool) -> dict:
    # the dry run trains on 256 digits: the code paths, in a few seconds (the suite runs it)
    data = {"source": "digits"} if gpu else {"source": "digits", "limit": 256}
    return {"name": "gpucheck", "storage": {"root": root},
            "train": {"data": data, "model": MODEL, "epochs": epochs, "batch_size": batch,
                      "seed": 0, "r1": 1.0, "r1_every": 4, "mixed_precision": True,
                      "scaling": {"num_workers": 1, "use_gpu": gpu, "cpus_per_worker": 1},
                      "checkpoint": {"keep": 1, "resume": False}}}


def plain_train(device: str, epochs: int, batch: int) -> tuple[float, int]:
    """Steady images/s and peak GPU bytes of the same GAN step in one process, same autocast as the workers."""
    if device == "cpu":
        torch.set_num_threads(1)  # as a Ray Train worker with 1 CPU
    t = validate_job(train_job("unused", epochs, batch, device == "cuda")).train
    images, labels = digits_arrays(32, 1, t.data.limit)
    x, y = to_float(torch.from_numpy(images)).to(device), torch.from_numpy(labels).to(device)
    G, D = build_models(t)
    G, D = G.to(device), D.to(device)
    opt_g, opt_d = make_optimizers(G, D, t)
    use_amp = device == "cuda"
    dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if use_amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16) if use_amp else None
    noise = torch.Generator().manual_seed(0)
    if use_amp:
        torch.cuda.reset_peak_memory_stats()
    rates = []
    for epoch in range(epochs):
        idx = epoch_indices(len(x), epoch, 0, 1, t.seed)
        steps = len(idx) // batch
        if use_amp:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s in range(steps):
            b = idx[s * batch:(s + 1) * batch].to(device)
            z = torch.randn(batch, t.model.z_dim, generator=noise).to(device)
            gan_step(G, D, opt_g, opt_d, x[b], y[b], z, autocast, scaler, r1=t.r1 * t.r1_every if s % 4 == 0 else 0.0)
        if use_amp:
            torch.cuda.synchronize()
        rates.append(steps * batch / (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated() if use_amp else 0
    return statistics.mean(rates[1:] if len(rates) > 1 else rates), peak


def forward_ceiling(model_uri: str, device: str, n: int, batch: int) -> tuple[float, int]:
    """Images/s of the generator's forward pass alone (latents drawn on the device) and its peak GPU bytes."""
    g = load_package(model_uri).build_model(device)
    labels = torch.arange(batch, device=device) % 10
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        g(torch.randn(batch, 100, device=device), labels)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(max(1, n // batch)):
            x = g(torch.randn(batch, 100, device=device), labels)
            ((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
        if device == "cuda":
            torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return max(1, n // batch) * batch / seconds, torch.cuda.max_memory_allocated() if device == "cuda" else 0


def gen_job(root: str, model_uri: str, n: int, actors: int, batch: int, gpu: bool) -> dict:
    return {"name": "gen", "storage": {"root": root},  # one name: the job is in every asset's provenance
            "generate": {"model": model_uri, "seeds": {"count": n}, "shard_size": max(1, n // 8),
                         "output": "{root}/{name}", "formats": ["png", "parquet"],
                         "scaling": {"num_actors": actors, "num_cpus": 0.5, "num_gpus": 0.5 if gpu else 0,
                                     "batch_size": batch}}}


def files_of(uri: str) -> dict[str, str]:
    store = Store(uri)
    out = {}
    for rel in store.list():
        if rel.startswith(("images/", "data/", "_shards/")):
            out[rel] = hashlib.sha256(store.read(rel)).hexdigest()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: the code paths, not the figures")
    args = ap.parse_args()
    gpu = not args.dry_run
    if gpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run with --dry-run to check the code paths on the CPU")
    device = "cuda" if gpu else "cpu"
    epochs, batch, n, gbatch = (4, 256, 100_000, 1024) if gpu else (2, 32, 256, 64)
    from pipeline.generate import run_generate
    from pipeline.runtime import ensure_ray

    t = time.perf_counter()
    ensure_ray(num_cpus=os.cpu_count() if gpu else 2)
    print(f"device: {torch.cuda.get_device_name(0) if gpu else 'cpu (dry run)'}; torch {torch.__version__}; "
          f"ray start-up {time.perf_counter() - t:.1f}s (not in any figure)")
    tmp = Path(tempfile.mkdtemp(prefix="aigc-gpucheck-"))

    # 1. training: Ray Train (1 GPU worker, AMP) vs the plain loop
    plain, plain_peak = plain_train(device, epochs, batch)
    res = train(validate_job(train_job(str(tmp / "train"), epochs, batch, gpu)))
    rates = [h["images/s"] for h in res.history]
    steady = statistics.mean(rates[1:] if len(rates) > 1 else rates)
    amp = ("AMP bf16" if torch.cuda.is_bf16_supported() else "AMP fp16 + GradScaler") if gpu else "CPU, no AMP"
    print(f"1. training ({amp}, batch {batch}): plain loop "
          f"{plain:,.0f} images/s | Ray Train 1 worker {steady:,.0f} images/s | ratio {steady / plain:.2f}x")

    # 2. generation vs the forward-only ceiling, same generator and batch
    model_uri = str(tmp / "model")
    torch.manual_seed(0)
    cfg = ModelSpec(**MODEL)
    export_package(model_uri, Generator(cfg), cfg, {"note": "gpu check, untrained"})
    ceiling, fwd_peak = forward_ceiling(model_uri, device, n, gbatch)
    t = time.perf_counter()
    out = run_generate(validate_job(gen_job(str(tmp / "gen"), model_uri, n, 2, gbatch, gpu)), date="2026-01-01",
                       progress=False, log=lambda *a: None)
    pipe = out.items / (time.perf_counter() - t)
    print(f"2. generation (N={n:,}, batch {gbatch}, PNG + Parquet to local disk): forward-only ceiling "
          f"{ceiling:,.0f} images/s | pipeline {pipe:,.0f} images/s | ratio {pipe / ceiling:.3f}x")

    # 3. byte identity across actor counts at a fixed batch size
    m = min(n, 4096)
    one = run_generate(validate_job(gen_job(str(tmp / "one"), model_uri, m, 1, 256, gpu)), date="2026-01-01",
                       progress=False, log=lambda *a: None)
    two = run_generate(validate_job(gen_job(str(tmp / "two"), model_uri, m, 2, 256, gpu)), date="2026-01-01",
                       progress=False, log=lambda *a: None)
    a, b = files_of(one.output), files_of(two.output)
    same = a == b and len(a) > m
    print(f"3. byte identity, 1 vs 2 actors at batch 256 on {device}: {'identical' if same else 'DIFFERENT'} "
          f"({len(a):,} files)")

    # 4. peak GPU memory
    print(f"4. peak GPU memory: plain training loop {plain_peak / 2**20:,.0f} MiB, forward ceiling "
          f"{fwd_peak / 2**20:,.0f} MiB" + ("" if gpu else " (not measured on the CPU)"))
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
