"""Bulk text completion: prompts → completions from a byte-level GPT package, shard by shard.

    aigc generate jobs/text-demo.yaml --date 2026-11-28

:func:`pipeline.generate.run_generate` hands a text package (``model.arch: bytegpt``) to
:func:`run_complete`, and everything but the actor is the image path's own code: prompt files
(:mod:`pipeline.prompts`, with the prompt filter), item ids and seeds (``p<line>-<k>``, the
seed from (job seed, line, k) alone), fixed shards cut from the spec, the ``_job.json``
fingerprint, the per-output lock, resume of committed shards, orphan removal, manifest and
``_SUCCESS``.

The actor (:class:`CompletionGenerator`) loads the package once and completes each item alone
(:func:`pipeline.models.textgen.complete`, its own ``torch.Generator(seed)``), so the bytes of an
item never depend on actor count, batch size, shard neighbours or retries. Each shard becomes
one Parquet file, ``data/part-<shard>.parquet``, with :data:`TEXT_SCHEMA`, committed with its
index.

Completions are bytes. ``completion`` holds them decoded as UTF-8 with ``errors="replace"`` (each
invalid sequence, e.g. a character cut off by ``max_new_tokens``, becomes U+FFFD); the exact
bytes are in ``completion_bytes`` and ``utf8_valid`` says whether a replacement happened.
Sampling stops at the end-of-text token (``stop_reason: eos``) or after ``max_new_tokens``
(``length``). With ``generate.text.filter_completions`` the prompt filter also checks each
completion: a blocked one keeps its row, with the reason in ``rejected`` and no text, and the
manifest counts it (``completions_rejected``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.encode import IPTC_TRAINED_ALGORITHMIC_MEDIA, SOFTWARE, logical_time, parquet_bytes
from pipeline.errors import PipelineError
from pipeline.generate import (GenerateResult, ShardConfig, _generate_locked, check_output_is_ours, part_path, run_key,
                               shard_items)
from pipeline.models.textgen import SAMPLER, complete
from pipeline.package import ModelPackage, PackageError, load_package
from pipeline.prompts import load_prompts
from pipeline.safety import PromptFilter
from pipeline.specs import JobSpec, TextSamplingSpec
from pipeline.storage import Store, commit_shard

TEXT_SCHEMA = pa.schema([
    ("item_id", pa.string()),
    ("prompt", pa.string()),
    ("completion", pa.string()),  # UTF-8, invalid sequences replaced; null when rejected
    ("completion_bytes", pa.binary()),  # the exact bytes sampled; null when rejected
    ("utf8_valid", pa.bool_()),
    ("stop_reason", pa.string()),  # "eos" | "length"
    ("rejected", pa.string()),  # why the completion filter blocked it, else null
    ("seed", pa.int64()),
    ("model_sha256", pa.string()),
    ("temperature", pa.float64()),
    ("top_k", pa.int32()),
    ("max_new_tokens", pa.int32()),
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("job", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
    ("digital_source_type", pa.string()),  # IPTC: trainedAlgorithmicMedia
    ("software", pa.string()),
])


@dataclass
class CompletionConfig:
    """What a completion actor needs: the image path's shard config plus the sampling settings."""

    shard: ShardConfig
    sampling: TextSamplingSpec
    blocklist: list[str]
    allowlist: list[str]


class CompletionGenerator:
    """Ray Data callable class: loads the text model once, then turns shard rows into committed shards."""

    def __init__(self, cfg: CompletionConfig):
        import torch

        cfg.shard.env.apply()
        torch.set_num_threads(cfg.shard.threads)  # actors share the node: one pool, not N x all cores
        self.cfg = cfg
        pkg = load_package(cfg.shard.model_uri, cfg.shard.storage)
        if pkg.model_sha256 != cfg.shard.model_sha256:  # the package changed under a running job
            raise PackageError(f"{cfg.shard.model_uri}: model changed during the run (sha256 {pkg.model_sha256[:12]}…)")
        self.model = pkg.build_model(cfg.shard.device)
        self.store = Store(cfg.shard.output, cfg.shard.storage)
        self.created_at = logical_time(cfg.shard.date)
        s = cfg.sampling
        self.filter = PromptFilter(cfg.blocklist, cfg.allowlist) if s.filter_completions else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"shard": [], "items": [], "files": [], "bytes": []}
        for i in range(len(batch["shard"])):
            summary = self.run_shard({k: batch[k][i] for k in batch})
            for k in out:
                out[k].append(summary[k])
        return out

    def row(self, item_id: str, prompt: str, seed: int) -> dict[str, Any]:
        """One item: its completion and provenance, as a Parquet row."""
        s, cfg = self.cfg.sampling, self.cfg.shard
        prompt_bytes = prompt.encode("utf-8")
        c = complete(self.model, prompt_bytes, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                     top_k=s.top_k, seed=seed, device=cfg.device)
        text = c.data.decode("utf-8", errors="replace")
        rejected = self.filter.check(text) if self.filter is not None else None
        return {"item_id": item_id, "prompt": prompt, "completion": None if rejected else text,
                "completion_bytes": None if rejected else c.data, "utf8_valid": text.encode("utf-8") == c.data,
                "stop_reason": c.stop, "rejected": rejected, "seed": seed, "model_sha256": cfg.model_sha256,
                "temperature": s.temperature, "top_k": s.top_k, "max_new_tokens": s.max_new_tokens,
                "prompt_tokens": len(prompt_bytes), "completion_tokens": len(c.tokens), "job": cfg.job,
                "created_at": self.created_at, "digital_source_type": IPTC_TRAINED_ALGORITHMIC_MEDIA,
                "software": SOFTWARE}

    def run_shard(self, row: dict[str, Any]) -> dict[str, Any]:
        shard = str(row["shard"])
        items = shard_items(row, self.cfg.shard.job_seed, None)
        rows = [self.row(it.item_id, it.prompt or "", it.seed) for it in items]
        cols = {name: [r[name] for r in rows] for name in TEXT_SCHEMA.names}
        files = {part_path(shard): parquet_bytes(cols, TEXT_SCHEMA)}
        counts = {"completions_rejected": sum(r["rejected"] is not None for r in rows),
                  "completion_tokens": sum(r["completion_tokens"] for r in rows)}
        rec = commit_shard(self.store, shard, files, {"items": len(items), "counts": counts})
        return {"shard": shard, "items": len(items), "files": rec["files"], "bytes": rec["bytes"]}


def run_complete(job: JobSpec, pkg: ModelPackage, store: Store, *, model_uri: str, date: str, address: str | None,
                 progress: bool, log, t0: float) -> GenerateResult:
    """The generate stage for a text package: check, load prompts, then the shared shard machinery."""
    gen = job.generate
    assert gen is not None
    if gen.seeds is not None:
        raise PipelineError(f"generate.seeds: the model at {model_uri} is a text model (bytegpt); it completes prompts: "
                            "use generate.prompts")
    if gen.prompts is None:
        raise PipelineError(f"generate.prompts: the model at {model_uri} is a text model (bytegpt); it needs a prompts file")
    if "formats" in gen.model_fields_set and "png" in gen.formats:
        raise PipelineError("generate.formats: a text model writes Parquet only; set formats: [parquet]")
    sampling = gen.text or TextSamplingSpec()
    prompts = load_prompts(gen.prompts, job.storage, num_classes=None,
                           prompt_filter=PromptFilter(gen.safety.blocklist, gen.safety.allowlist),
                           shard_size=gen.shard_size)
    key = run_key(job, pkg.model_sha256, date)

    def make_actor(shard: ShardConfig) -> tuple[type, CompletionConfig]:
        return CompletionGenerator, CompletionConfig(shard=shard, sampling=sampling, blocklist=list(gen.safety.blocklist),
                                                     allowlist=list(gen.safety.allowlist))

    output = store.uri
    check_output_is_ours(store)  # before the lock file: nothing is written into a folder that is not ours
    with store.lock(on_wait=lambda: log(f"generate: another run is writing {output}; waiting for it to finish")):
        return _generate_locked(job, store, output=output, date=date, address=address, progress=progress, log=log,
                                model_uri=model_uri, model_sha256=pkg.model_sha256, num_classes=None, prompts=prompts,
                                key=key, t0=t0, make_actor=make_actor,
                                encoder={"sampler": SAMPLER, "parquet_schema": TEXT_SCHEMA.to_string()})
