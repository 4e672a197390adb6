"""Work items and shards, cut from the spec alone.

1. **Work items.** Seed items ``start .. start+count-1`` and prompt items (prompt line x sample).
   Each has an ``item_id`` and a seed derived only from the spec (:func:`item_seed`).
2. **Shards.** Items are cut into fixed shards of ``shard_size``, by the spec, not by how Ray
   blocks the data. A shard is the unit of work, retry, naming and commit. The plan is compact:
   a seed shard is a range, a prompt shard a list of (prompt, sample range) segments, so it grows
   with prompts and shards, never with items.
3. **Names.** :func:`ours` tells whether a path under ``images/`` or ``data/`` is one this plan
   could have written; nothing else is ever deleted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from pipeline.prompts import PromptSet
from pipeline.specs.schema import JobSpec

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_seed(job_seed: int, stream: int, a: int, b: int = 0) -> int:
    """A 63-bit seed from (job seed, stream, index a, index b) alone. stream 0 = seeds, 1 = prompts."""
    x = _splitmix64(job_seed)
    for v in (stream, a, b):
        x = _splitmix64(x ^ (v & _MASK64))
    return x >> 1


def seed_item_id(i: int) -> str:
    return f"s{i:012d}"


def prompt_item_id(line: int, k: int) -> str:
    return f"p{line:09d}-{k:05d}"


@dataclass(frozen=True)
class Item:
    item_id: str
    seed: int
    label: int | None
    prompt: str | None = None


@dataclass
class ShardPlan:
    """One shard of the plan, compact: a range of seed indices, or segments of prompt samples.

    A prompt segment is ``[line, k0, k1, label, text]``: samples k0..k1-1 of the prompt on that
    line. The plan (and every Ray Data row) grows with the number of shards and prompts, never
    with the number of items: a prompt asking for 100,000 samples is one segment per shard it spans.
    """

    shard_id: str
    start: int = 0  # seed shards: item indices start .. start+count-1
    count: int = 0
    segments: list[list] = field(default_factory=list)  # prompt shards: [line, k0, k1, label, text]

    @property
    def items(self) -> int:
        return self.count if not self.segments else sum(k1 - k0 for _, k0, k1, _, _ in self.segments)

    def row(self) -> dict[str, Any]:
        return {"shard": self.shard_id, "start": self.start, "count": self.count,
                "prompt_items": json.dumps(self.segments, ensure_ascii=False)}

    def item_ids(self) -> Iterator[str]:
        """The id of every item of this shard (what its file names are made of)."""
        if not self.segments:
            yield from (seed_item_id(i) for i in range(self.start, self.start + self.count))
        for line, k0, k1, _, _ in self.segments:
            yield from (prompt_item_id(line, k) for k in range(k0, k1))


def plan_shards(job: JobSpec, prompts: PromptSet | None) -> list[ShardPlan]:
    gen = job.generate
    assert gen is not None
    size = gen.shard_size
    shards: list[ShardPlan] = []
    if gen.seeds is not None:
        start, count = gen.seeds.start, gen.seeds.count
        for k, off in enumerate(range(0, count, size)):
            shards.append(ShardPlan(f"s{k:06d}", start=start + off, count=min(size, count - off)))
    if prompts is not None and prompts.prompts:
        segments: list[list] = []
        room, k = size, 0
        for p in prompts.prompts:
            k0 = 0
            while k0 < p.n:
                k1 = min(p.n, k0 + room)
                segments.append([p.line, k0, k1, p.label, p.text])
                room -= k1 - k0
                k0 = k1
                if room == 0:
                    shards.append(ShardPlan(f"p{k:06d}", segments=segments))
                    segments, room, k = [], size, k + 1
        if segments:
            shards.append(ShardPlan(f"p{k:06d}", segments=segments))
    return shards


def shard_items(row: dict[str, Any], job_seed: int, num_classes: int | None) -> list[Item]:
    segments = json.loads(row["prompt_items"]) if row["prompt_items"] else []
    if segments:
        return [Item(item_id=prompt_item_id(line, k), seed=item_seed(job_seed, 1, line, k), label=label, prompt=text)
                for line, k0, k1, label, text in segments for k in range(k0, k1)]
    start, count = int(row["start"]), int(row["count"])
    return [Item(item_id=seed_item_id(i), seed=item_seed(job_seed, 0, i),
                 label=(i % num_classes) if num_classes else None) for i in range(start, start + count)]


_TMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{8,40}\Z")  # Store.write's temporary name while a file is written


_ASSET_NAME = re.compile(r"images/([sp]\d{6})/([^/]+)\.[a-z0-9]+\Z")


_TAR_NAME = re.compile(r"images/([sp]\d{6})\.tar\Z")
_PART_NAME = re.compile(r"data/part-([sp]\d{6})\.parquet\Z")


def ours(rel: str, shards: dict[str, ShardPlan], ids: dict[str, set[str]]) -> bool:
    """Whether this run's plan could have written ``rel`` (itself, or its temporary file while writing)."""
    rel = _TMP_SUFFIX.sub("", rel)
    m = _PART_NAME.fullmatch(rel) or _TAR_NAME.fullmatch(rel)
    if m:
        return m.group(1) in shards
    m = _ASSET_NAME.fullmatch(rel)
    if not m or m.group(1) not in shards:
        return False
    if m.group(1) not in ids:
        ids[m.group(1)] = set(shards[m.group(1)].item_ids())
    return m.group(2) in ids[m.group(1)]
