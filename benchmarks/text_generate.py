"""Text generation: completions/s and tokens/s of the pipeline against a plain loop, and the text model's
held-out perplexity against a unigram baseline, all measured in the same run.

    .venv/bin/python benchmarks/text_generate.py                  # the jobs/text-demo.yaml model
    .venv/bin/python benchmarks/text_generate.py --model URI      # any text model package
    .venv/bin/python benchmarks/text_generate.py --quick          # fewer completions

(a) Quality: ``aigc evaluate`` of the package: held-out perplexity per byte of the model and of the
    unigram (byte-frequency) model of the training split, on the same held-out bytes.
(b) Throughput: the same N completions (the demo prompts, ``--samples`` each, the demo's sampling
    settings), in one run, by
    * the previous release's sampler: a plain single-process loop calling ``complete()`` item by
      item (one Parquet file per shard; 2 torch threads);
    * ``aigc generate`` with ``generate.text.batch_size: 1``: the pipeline sampling one item at a
      time, as the previous release did (2 actors);
    * a plain batched loop: the same process, ``complete_batch()`` over the same fixed
      micro-batches the pipeline samples (shards of ``--shard``, groups of ``--batch``);
    * ``aigc generate`` with ``generate.text.batch_size: --batch`` (2 actors x 0.5 CPU, one torch
      thread each, shards, commits, manifest).
    The one-at-a-time runs take ``--prev-samples`` per prompt, the batched ones ``--samples``
    (more, so that the actors' start-up, a fixed cost, weighs as in a real job); all are rates.
    The pipeline's completions must equal the batched loop's byte for byte (the script checks).

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
from pipeline.families.bytegpt.model import complete, complete_batch
from pipeline.families.bytegpt.sampler import TEXT_SCHEMA
from pipeline.generate import item_seed, prompt_item_id, run_generate
from pipeline.package import load_package
from pipeline.specs import TextSamplingSpec, load_job, validate_job

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "jobs" / "text-demo.yaml"
PROMPTS = ROOT / "jobs" / "prompts" / "text-demo.txt"


def _row(item_id: str, prompt: str, seed: int, c, pkg, s: TextSamplingSpec, created) -> dict:
    text = c.data.decode("utf-8", "replace")
    return {"item_id": item_id, "prompt": prompt, "completion": text, "completion_bytes": c.data,
            "utf8_valid": text.encode() == c.data, "stop_reason": c.stop, "rejected": None, "seed": seed,
            "model_sha256": pkg.model_sha256, "temperature": s.temperature, "top_k": s.top_k,
            "max_new_tokens": s.max_new_tokens, "prompt_tokens": len(prompt.encode()),
            "completion_tokens": len(c.tokens), "job": "plain", "created_at": created,
            "digital_source_type": "trainedAlgorithmicMedia", "software": "plain loop"}


def plain_loop(model_uri: str, out: Path, prompts: list[str], samples: int, s: TextSamplingSpec, shard: int,
               batch: int | None, threads: int = 2) -> tuple[float, int, dict]:
    """A baseline: one process, ``threads`` torch threads, the same sampler and Parquet writer, no Ray.
    ``batch`` None: ``complete()`` item by item (the previous release); else ``complete_batch()`` per group."""
    torch.set_num_threads(threads)
    pkg = load_package(model_uri)
    model = pkg.build_model()
    created = logical_time("2026-01-01")
    out.mkdir(parents=True, exist_ok=True)
    items = [(prompt_item_id(line, k), p, item_seed(0, 1, line, k)) for line, p in enumerate(prompts, 1)
             for k in range(samples)]
    t0 = time.perf_counter()
    tokens, completions = 0, {}
    for lo in range(0, len(items), shard):
        part = items[lo: lo + shard]
        if batch is None:
            made = [complete(model, p.encode(), max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                             top_k=s.top_k, seed=seed) for _, p, seed in part]
        else:
            made = []
            for g in range(0, len(part), batch):
                group = part[g: g + batch]
                made += complete_batch(model, [p.encode() for _, p, _ in group], [seed for _, _, seed in group],
                                       max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k)
        rows = [_row(i, p, seed, c, pkg, s, created) for (i, p, seed), c in zip(part, made)]
        tokens += sum(r["completion_tokens"] for r in rows)
        completions.update({r["item_id"]: r["completion_bytes"] for r in rows})
        cols = {k: [r[k] for r in rows] for k in TEXT_SCHEMA.names}
        (out / f"part-{lo // shard:06d}.parquet").write_bytes(parquet_bytes(cols, TEXT_SCHEMA))
    return time.perf_counter() - t0, tokens, completions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="text model package URI (default: train or reuse the jobs/text-demo.yaml one)")
    ap.add_argument("--samples", type=int, default=104, help="completions per demo prompt (batched runs)")
    ap.add_argument("--prev-samples", type=int, default=26, help="completions per demo prompt for the one-at-a-time "
                                                                 "runs (rates: they amortize nothing)")
    ap.add_argument("--quick", action="store_true", help="3 completions per prompt")
    ap.add_argument("--shard", type=int, default=128, help="items per shard")
    ap.add_argument("--batch", type=int, default=64, help="generate.text.batch_size")
    args = ap.parse_args()
    samples = 3 if args.quick else args.samples
    prev = 3 if args.quick else min(args.prev_samples, samples)
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
    text = {**sampling.model_dump(), "batch_size": args.batch, "filter_completions": False}
    spec = {"name": "bench", "storage": {"root": str(tmp)},
            "generate": {"model": model_uri, "seed": 0, "prompts": {"uri": str(PROMPTS), "samples_per_prompt": samples},
                         "output": "{root}/{name}", "formats": ["parquet"], "shard_size": args.shard,
                         "text": text, "scaling": {"num_actors": 2, "num_cpus": 0.5}}}
    n = len(prompts) * samples
    # warm-up: actors, imports, page cache
    warm = validate_job({**spec, "name": "warm",
                         "generate": {**spec["generate"], "prompts": {"uri": str(PROMPTS), "samples_per_prompt": 1}}})
    run_generate(warm, date="2026-01-01", progress=False, log=lambda *a: None)

    # (b) the previous sampler, a plain batched loop and the pipeline, in one run
    s = validate_job(spec).generate.text
    one_s, one_tokens, _ = plain_loop(model_uri, tmp / "one", prompts, prev, s, args.shard, None)
    single = validate_job({**spec, "name": "single", "generate": {
        **spec["generate"], "prompts": {"uri": str(PROMPTS), "samples_per_prompt": prev},
        "text": {**text, "batch_size": 1}}})
    t = time.perf_counter()
    res1 = run_generate(single, date="2026-01-01", progress=False, log=lambda *a: None)
    single_s = time.perf_counter() - t
    single_tokens = sum(r["completion_tokens"] for r in pq.read_table(Path(res1.output) / "data").to_pylist())
    bat_s, bat_tokens, _ = plain_loop(model_uri, tmp / "batched", prompts, samples, s, args.shard, args.batch)
    # one thread, as each actor computes (generate/driver.py): the bytes the pipeline must reproduce exactly
    b1_s, b1_tokens, bat_out = plain_loop(model_uri, tmp / "batched1", prompts, samples, s, args.shard, args.batch, 1)
    t = time.perf_counter()
    res = run_generate(validate_job(spec), date="2026-01-01", progress=False, log=lambda *a: None)
    pipe_s = time.perf_counter() - t
    rows = pq.read_table(Path(res.output) / "data").to_pylist()
    same = {r["item_id"]: r["completion_bytes"] for r in rows} == bat_out
    pipe_tokens = sum(r["completion_tokens"] for r in rows)
    rate = {"one": one_tokens / one_s, "single": single_tokens / single_s, "bat": bat_tokens / bat_s,
            "b1": b1_tokens / b1_s, "pipe": pipe_tokens / pipe_s}
    print(f"(b) max_new_tokens {s.max_new_tokens}, temperature {s.temperature:g}, top_k {s.top_k}, shards of "
          f"{args.shard}; one-at-a-time runs: {len(prompts) * prev:,} completions, batched runs: {n:,}")
    print(f"    previous sampler (one item at a time, plain loop, 2 threads): {rate['one']:,.0f} tokens/s "
          f"({one_s:.1f}s)")
    print(f"    pipeline, generate.text.batch_size 1 (one at a time, 2 actors): {rate['single']:,.0f} tokens/s "
          f"({single_s:.1f}s)")
    print(f"    plain batched loop (micro-batches of {args.batch}, 2 threads): {rate['bat']:,.0f} tokens/s "
          f"({bat_s:.1f}s)")
    print(f"    plain batched loop, 1 thread:                           {rate['b1']:,.0f} tokens/s ({b1_s:.1f}s)")
    print(f"    pipeline, generate.text.batch_size {args.batch} (2 actors):       {rate['pipe']:,.0f} tokens/s "
          f"({pipe_s:.1f}s, actor start, commits and publish included)")
    print(f"    pipeline / previous sampler: {rate['pipe'] / rate['one']:.2f}x  |  pipeline batched / one at a time: "
          f"{rate['pipe'] / rate['single']:.2f}x  |  pipeline / plain batched loop: {rate['pipe'] / rate['bat']:.2f}x"
          "  |  target >= 10x")
    print(f"    completions byte-identical between the 1-thread plain batched loop and the pipeline: {same}")
    shutil.rmtree(tmp, ignore_errors=True)
    if not same:
        sys.exit(1)

if __name__ == "__main__":
    main()
