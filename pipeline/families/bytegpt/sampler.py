"""The byte-level GPT's generation sampler: prompts → completions, one Parquet row each.

    aigc generate jobs/text-demo.yaml --date 2026-11-28

The shared generation machinery (:mod:`pipeline.generate`) runs this sampler in its actors: prompt
files with the prompt filter, item ids and seeds (``p<line>-<k>``, the seed from (job seed, line,
k) alone), fixed shards, the ``_job.json`` fingerprint, the lock, resume, manifest and
``_SUCCESS`` are the same as for images.

:class:`CompletionSampler` samples the items of a shard in fixed micro-batches of
``generate.text.batch_size`` (:func:`pipeline.families.bytegpt.model.complete_batch`), each item
from its own ``torch.Generator(seed)``: the micro-batches are cut from the spec and their size is
in the run's fingerprint, so the bytes never depend on actor count, scheduling or retries. Each
shard becomes one Parquet file with :data:`TEXT_SCHEMA`.

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
from typing import Any, Callable

import pyarrow as pa

from pipeline.encode import IPTC_TRAINED_ALGORITHMIC_MEDIA, SOFTWARE
from pipeline.families.bytegpt.model import Completion, complete_batch
from pipeline.safety import PromptFilter
from pipeline.specs.schema import TextSamplingSpec

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
class CompletionOptions:
    """What a completion sampler needs beyond the package (the driver's ``sampler_options``)."""

    sampling: TextSamplingSpec
    blocklist: list[str]
    allowlist: list[str]


class CompletionSampler:
    """Items → [({}, row)]: a completion per prompt item; no file of its own, one Parquet row."""

    schema = TEXT_SCHEMA
    seed_classes = None

    def __init__(self, package: Any, cfg: Any):
        self.cfg = cfg
        self.options: CompletionOptions = cfg.options
        self.model = package.build_model(cfg.device)
        self.created_at = cfg.created_at
        s = self.options.sampling
        self.filter = PromptFilter(self.options.blocklist, self.options.allowlist) if s.filter_completions else None
        self.micro_batch = s.batch_size  # the bytes depend on it: it is in the run's fingerprint

    def row(self, item_id: str, prompt: str, seed: int, c: Completion) -> dict[str, Any]:
        """One item: its completion and provenance, as a Parquet row."""
        s, cfg = self.options.sampling, self.cfg
        text = c.data.decode("utf-8", errors="replace")
        rejected = self.filter.check(text) if self.filter is not None else None
        return {"item_id": item_id, "prompt": prompt, "completion": None if rejected else text,
                "completion_bytes": None if rejected else c.data, "utf8_valid": text.encode("utf-8") == c.data,
                "stop_reason": c.stop, "rejected": rejected, "seed": seed, "model_sha256": cfg.model_sha256,
                "temperature": s.temperature, "top_k": s.top_k, "max_new_tokens": s.max_new_tokens,
                "prompt_tokens": len(prompt.encode("utf-8")), "completion_tokens": len(c.tokens), "job": cfg.job,
                "created_at": self.created_at, "digital_source_type": IPTC_TRAINED_ALGORITHMIC_MEDIA,
                "software": SOFTWARE}

    def __call__(self, chunk: list[Any], path_of: Callable[[str, str], str]) -> list[tuple[dict, dict]]:
        """One micro-batch of ``generate.text.batch_size`` items, sampled together."""
        s = self.options.sampling
        prompts = [it.prompt or "" for it in chunk]
        done = complete_batch(self.model, [p.encode("utf-8") for p in prompts], [it.seed for it in chunk],
                              max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k,
                              device=self.cfg.device)
        return [({}, self.row(it.item_id, p, it.seed, c)) for it, p, c in zip(chunk, prompts, done)]

    @staticmethod
    def counts(rows: list[dict]) -> dict[str, int]:
        return {"completions_rejected": sum(r["rejected"] is not None for r in rows),
                "completion_tokens": sum(r["completion_tokens"] for r in rows)}
