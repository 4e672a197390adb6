"""Text generation: completions/s and tokens/s of the pipeline against a plain loop, and the text model's
held-out perplexity against a unigram baseline, all measured in the same run.

    .venv/bin/python benchmarks/text_generate.py                  # the jobs/text-demo.yaml model
    .venv/bin/python benchmarks/text_generate.py --model URI      # any text model package
    .venv/bin/python benchmarks/text_generate.py --quick          # fewer completions

(a) Quality: ``aigc evaluate`` of the package: held-out perplexity per byte of the model and of the
    unigram (byte-frequency) model of the training split, on the same held-out bytes.
(b) Throughput: the same N completions (the demo prompts, ``--samples`` each, the demo's sampling
    settings) by a plain single-process loop (load the package, ``complete()`` each item, one
    Parquet file per 20 items; 2 torch threads) and by ``aigc generate`` (2 actors x 0.5 CPU, one
    torch thread each, shards of 20, commits, manifest). Both write the same completions: the
    script checks that every completion's bytes are equal.

Without ``--model`` the demo's train stage runs first (or its package under outputs/ is reused).
Ray is started once, before the timed runs; its start-up is reported separately.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import pyarrow.parquet as pq
import torch

from pipeline.encode import logical_time, parquet_bytes
from pipeline.families.bytegpt.model import complete
from pipeline.families.bytegpt.sampler import TEXT_SCHEMA
from pipeline.generate import item_seed, prompt_item_id, run_generate
from pipeline.package import load_package
from pipeline.specs import TextSamplingSpec, load_job, validate_job

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "text-demo.yaml"
PROMPTS = ROOT / "jobs" / "prompts" / "text-demo.txt"
SHARD = 20


def plain_loop(model_uri: str, out: Path, prompts: list[str], samples: int,
               s: TextSamplingSpec) -> tuple[float, int, dict]:
    """The baseline: one process, 2 torch threads, the same sampler and Parquet writer, no Ray."""
    torch.set_num_threads(2)
    pkg = load_package(model_uri)
    model = pkg.build_model()
    created = logical_time("2026-01-01")
    out.mkdir(parents=True, exist_ok=True)
    items = [(prompt_item_id(line, k), p, item_seed(0, 1, line, k)) for line, p in enumerate(prompts, 1)
             for k in range(samples)]
    t0 = time.perf_counter()
    tokens, completions = 0, {}
    for lo in range(0, len(items), SHARD):
        rows = []
        for item_id, prompt, seed in items[lo: lo + SHARD]:
            c = complete(model, prompt.encode(), max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                         top_k=s.top_k, seed=seed)
            tokens += len(c.tokens)
            completions[item_id] = c.data
            text = c.data.decode("utf-8", "replace")
            rows.append({"item_id": item_id, "prompt": prompt, "completion": text, "completion_bytes": c.data,
                         "utf8_valid": text.encode() == c.data, "stop_reason": c.stop, "rejected": None, "seed": seed,
                         "model_sha256": pkg.model_sha256, "temperature": s.temperature, "top_k": s.top_k,
                         "max_new_tokens": s.max_new_tokens, "prompt_tokens": len(prompt.encode()),
                         "completion_tokens": len(c.tokens), "job": "plain", "created_at": created,
                         "digital_source_type": "trainedAlgorithmicMedia", "software": "plain loop"})
        cols = {k: [r[k] for r in rows] for k in TEXT_SCHEMA.names}
        (out / f"part-{lo // SHARD:06d}.parquet").write_bytes(parquet_bytes(cols, TEXT_SCHEMA))
    return time.perf_counter() - t0, tokens, completions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="text model package URI (default: train or reuse the jobs/text-demo.yaml one)")
    ap.add_argument("--samples", type=int, default=10, help="completions per demo prompt")
    ap.add_argument("--quick", action="store_true", help="3 completions per prompt")
    args = ap.parse_args()
    samples = 3 if args.quick else args.samples
    demo = load_job(DEMO, [f"generate.prompts.uri={PROMPTS}",
                           f"train.data.uri={ROOT / 'jobs' / 'corpus' / 'demo.txt'}"])
    sampling = demo.generate.text
    prompts = [p.strip() for p in PROMPTS.read_text().splitlines() if p.strip()]

    from pipeline.runtime import ensure_ray

    t = time.perf_counter()
    ensure_ray(num_cpus=2)
    print(f"ray start-up: {time.perf_counter() - t:.1f}s (not in the timed runs below)")

    model_uri = args.model
    if model_uri is None:
        from pipeline.train.driver import train

        t = time.perf_counter()
        res = train(demo)
        model_uri = res.package_uri
        print(f"model: {model_uri} ({'reused' if res.skipped else f'trained in {time.perf_counter() - t:.0f}s'})")

    # (a) quality: model vs unigram on the same held-out bytes
    from pipeline.evaluate import run_evaluate

    ev = run_evaluate(demo, model_uri=model_uri, log=lambda *a: None)
    print(f"(a) held-out perplexity per byte: model {ev.model.perplexity:.2f} ({ev.model.bits_per_byte:.2f} bits/byte) "
          " |  "
          f"unigram {ev.baseline.perplexity:.2f} ({ev.baseline.bits_per_byte:.2f} bits/byte)  |  ratio {ev.ratio:.2f}x "
          f"on {ev.n:,} bytes")

    tmp = Path(tempfile.mkdtemp(prefix="aigc-textbench-"))
    spec = {"name": "bench", "storage": {"root": str(tmp)},
            "generate": {"model": model_uri, "seed": 0, "prompts": {"uri": str(PROMPTS), "samples_per_prompt": samples},
                         "output": "{root}/{name}", "formats": ["parquet"], "shard_size": SHARD,
                         "text": sampling.model_dump(), "scaling": {"num_actors": 2, "num_cpus": 0.5}}}
    n = len(prompts) * samples
    # warm-up: actors, imports, page cache
    warm = validate_job({**spec, "name": "warm",
                         "generate": {**spec["generate"], "prompts": {"uri": str(PROMPTS), "samples_per_prompt": 1}}})
    run_generate(warm, date="2026-01-01", progress=False, log=lambda *a: None)

    # (b) pipeline vs plain loop
    base_s, base_tokens, base_out = plain_loop(model_uri, tmp / "plain", prompts, samples, sampling)
    t = time.perf_counter()
    res = run_generate(validate_job(spec), date="2026-01-01", progress=False, log=lambda *a: None)
    pipe_s = time.perf_counter() - t
    rows = pq.read_table(Path(res.output) / "data").to_pylist()
    same = {r["item_id"]: r["completion_bytes"] for r in rows} == base_out
    pipe_tokens = sum(r["completion_tokens"] for r in rows)
    print(f"(b) N={n:,} completions (max_new_tokens {sampling.max_new_tokens}, temperature {sampling.temperature:g}, "
          f"top_k {sampling.top_k}), {base_tokens:,} tokens")
    print(f"    plain loop {n / base_s:,.1f} completions/s, {base_tokens / base_s:,.0f} tokens/s ({base_s:.1f}s)  |  "
          f"pipeline {n / pipe_s:,.1f} completions/s, {pipe_tokens / pipe_s:,.0f} tokens/s ({pipe_s:.1f}s, incl. "
          f"publish)  |  ratio {base_s / pipe_s:.2f}x")
    print(f"    completions byte-identical between the plain loop and the pipeline: {same}")
    shutil.rmtree(tmp, ignore_errors=True)
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
