"""Bulk generation: seeds and prompts → committed PNG + Parquet shards in any storage.

    aigc generate jobs/demo.yaml --date 2026-11-28

How a job becomes bytes (DESIGN §3):

1. **Work items.** Seed items ``start .. start+count-1`` and prompt items (prompt line x sample).
   Each has an ``item_id`` and a seed derived only from the spec (:func:`item_seed`).
2. **Shards.** Items are cut into fixed shards of ``shard_size``, by the spec, not by how Ray
   blocks the data. A shard is the unit of work, retry, naming and commit.
3. **Ray Data.** One row per shard still to do; ``map_batches`` runs :class:`ShardGenerator`
   (loads the model package once per actor) on an ``ActorPoolStrategy`` pool. The actor
   generates the shard in fixed micro-batches, encodes PNGs with provenance, writes them and the
   shard's Parquet file straight to storage, then commits the shard index. Only small summaries
   travel back through the object store.
4. **Publish.** When every shard is committed: orphans removed, ``manifest.json`` then
   ``_SUCCESS``. A rerun skips committed shards; a rerun of a published job is a no-op.

Item bytes depend only on (spec, model package, item), never on actor count or retries.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from pipeline.encode import SCHEMA, encode_png, logical_time, parquet_bytes, provenance
from pipeline.errors import PipelineError, last_error_line, user_error_line
from pipeline.models.text_encoder import VERSION as TEXT_ENCODER_VERSION
from pipeline.package import PackageError, load_package, train_package_uri
from pipeline.prompts import PromptSet, load_prompts
from pipeline.safety import PromptFilter
from pipeline.specs import JobSpec, StorageSpec, render_output, today
from pipeline.storage import (
    LOCK,
    StorageError,
    Store,
    WorkerEnv,
    absolute_uri,
    worker_env,
    commit_shard,
    committed_shards,
    is_published,
    json_bytes,
    publish,
    sha256,
)

JOB_FILE = "_job.json"
REJECTED = "rejected.jsonl"
_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------- 1. items
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


def plan_shards(job: JobSpec, prompts: PromptSet | None, num_classes: int | None) -> list[ShardPlan]:
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


# --------------------------------------------------------------------------------------------- 2. names
def asset_path(shard: str, item_id: str, ext: str) -> str:
    """Where an item's own file goes: ``images/<shard>/<item id>.<ext>``."""
    return f"images/{shard}/{item_id}.{ext}"


def part_path(shard: str) -> str:
    """Where a shard's table goes: ``data/part-<shard>.parquet``."""
    return f"data/part-{shard}.parquet"


_TMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{12}\Z")  # Store.write's temporary name while a file is written
_ASSET_NAME = re.compile(r"images/([sp]\d{6})/([^/]+)\.[a-z0-9]+\Z")
_PART_NAME = re.compile(r"data/part-([sp]\d{6})\.parquet\Z")


def ours(rel: str, shards: dict[str, ShardPlan], ids: dict[str, set[str]]) -> bool:
    """Whether this run's plan could have written ``rel`` (itself, or its temporary file while writing)."""
    rel = _TMP_SUFFIX.sub("", rel)
    m = _PART_NAME.fullmatch(rel)
    if m:
        return m.group(1) in shards
    m = _ASSET_NAME.fullmatch(rel)
    if not m or m.group(1) not in shards:
        return False
    if m.group(1) not in ids:
        ids[m.group(1)] = set(shards[m.group(1)].item_ids())
    return m.group(2) in ids[m.group(1)]


# --------------------------------------------------------------------------------------------- 3. actor
@dataclass
class ShardConfig:
    """Everything an actor needs, as plain data (it is shipped to every actor once)."""

    model_uri: str
    model_sha256: str
    output: str
    storage: StorageSpec
    job: str
    job_seed: int
    date: str
    formats: list[str]
    batch_size: int
    threads: int
    device: str = "cpu"
    env: WorkerEnv = field(default_factory=WorkerEnv)  # storage credentials: in the task, never in a Ray log


class ShardGenerator:
    """Ray Data callable class: loads the model once, then turns shard rows into committed shards."""

    def __init__(self, cfg: ShardConfig):
        import torch

        cfg.env.apply()
        torch.set_num_threads(cfg.threads)  # actors share the node: one pool, not N x all cores
        self.cfg = cfg
        pkg = load_package(cfg.model_uri, cfg.storage)
        if pkg.model_sha256 != cfg.model_sha256:  # the package changed under a running job
            raise PackageError(f"{cfg.model_uri}: model changed during the run (sha256 {pkg.model_sha256[:12]}…)")
        self.model = pkg.config
        self.g = pkg.build_generator(cfg.device)
        te = self.model.text_encoder
        self.classes = (te.classes or []) if te is not None else []
        self.classes += [str(i) for i in range(len(self.classes), self.model.num_classes)]
        self.store = Store(cfg.output, cfg.storage)
        self.created_at = logical_time(cfg.date)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"shard": [], "items": [], "files": [], "bytes": []}
        for i in range(len(batch["shard"])):
            row = {k: batch[k][i] for k in batch}
            summary = self.run_shard(row)
            for k in out:
                out[k].append(summary[k])
        return out

    def condition(self, chunk: list[Item]) -> tuple[Any, list[dict | None]]:
        """Condition vectors of a micro-batch, and what each resolved to (provenance).

        A text generator turns each prompt into its class posterior (times the class embeddings);
        items without a prompt (seed items) are conditioned on their label.
        """
        import torch

        labels = torch.tensor([it.label if it.label is not None else 0 for it in chunk], device=self.cfg.device)
        cond = self.g.condition(labels)
        resolved: list[dict | None] = [None] * len(chunk)
        texts = [i for i, it in enumerate(chunk) if it.prompt is not None]
        if self.g.text is not None and texts:
            post = self.g.prompt_posterior([chunk[i].prompt for i in texts])
            cond[texts] = (post @ self.g.embed.weight).to(cond.dtype)
            p, k = post.max(dim=1)
            for j, i in enumerate(texts):
                resolved[i] = {"from": "prompt", "label": int(k[j]), "class": self.classes[int(k[j])],
                               "p": round(float(p[j]), 4), "encoder": TEXT_ENCODER_VERSION}
        return cond, resolved

    def pixels(self, items: list[Item]) -> Iterator[tuple[np.ndarray, list[dict | None]]]:
        """uint8 NHWC images for ``items`` (and their resolved conditions), in fixed micro-batches."""
        import torch

        cfg, model = self.cfg, self.model
        with torch.inference_mode():
            for lo in range(0, len(items), cfg.batch_size):
                chunk = items[lo: lo + cfg.batch_size]
                # each item's latent comes from its own generator: independent of batching
                z = torch.stack([torch.randn(model.z_dim, generator=torch.Generator().manual_seed(it.seed)) for it in chunk])
                cond, resolved = self.condition(chunk) if model.conditional else (None, [None] * len(chunk))
                x = self.g(z.to(cfg.device), cond=cond)
                x = ((x.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
                yield x.permute(0, 2, 3, 1).cpu().numpy(), resolved

    def run_shard(self, row: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        shard = str(row["shard"])
        items = shard_items(row, cfg.job_seed, self.model.num_classes if self.model.conditional else None)
        pngs: dict[str, bytes] = {}
        cols: dict[str, list] = {name: [] for name in SCHEMA.names}
        k = 0
        for imgs, resolved in self.pixels(items):
            for px, res in zip(imgs, resolved):
                it = items[k]
                k += 1
                extra = {"aigc:condition": json.dumps(res, sort_keys=True)} if res is not None else None
                png = encode_png(px if px.shape[2] != 1 else px[:, :, 0],
                                 provenance(job=cfg.job, item_id=it.item_id, seed=it.seed,
                                            model_sha256=cfg.model_sha256, prompt=it.prompt, label=it.label,
                                            extra=extra))
                path = asset_path(shard, it.item_id, "png")
                if "png" in cfg.formats:
                    pngs[path] = png
                if "parquet" in cfg.formats:
                    cols["item_id"].append(it.item_id)
                    cols["seed"].append(it.seed)
                    cols["prompt"].append(it.prompt)
                    cols["label"].append(it.label)
                    cols["resolved_label"].append(res["label"] if res else None)
                    cols["resolved_p"].append(res["p"] if res else None)
                    cols["text_encoder"].append(res["encoder"] if res else None)
                    cols["image"].append({"bytes": png, "path": path})
                    cols["png_sha256"].append(sha256(png))
                    cols["width"].append(px.shape[1])
                    cols["height"].append(px.shape[0])
                    cols["model_sha256"].append(cfg.model_sha256)
                    cols["job"].append(cfg.job)
                    cols["created_at"].append(self.created_at)
        files = dict(pngs)
        if "parquet" in cfg.formats:
            files[part_path(shard)] = parquet_bytes(cols)
        rec = commit_shard(self.store, shard, files, {"items": len(items)})
        return {"shard": shard, "items": len(items), "files": rec["files"], "bytes": rec["bytes"]}


# --------------------------------------------------------------------------------------------- driver
@dataclass
class GenerateResult:
    output: str
    items: int
    shards: int
    shards_skipped: int
    rejected: int
    bytes: int
    seconds: float
    skipped: bool = False  # the whole job was already published

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


class Progress:
    """One-line progress on stderr: items, items/s, ETA (a carriage-return bar on a terminal)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.enabled = total, 0, enabled
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled or (now - self.last < (0.2 if self.tty else 5.0) and self.done < self.total):
            return
        self.last = now
        rate = self.done / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else 0
        width = 30
        fill = int(width * self.done / max(self.total, 1))
        line = (f"generate [{'#' * fill}{'.' * (width - fill)}] {self.done:,}/{self.total:,} items "
                f"{rate:,.0f} items/s ETA {eta:,.0f}s")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        if self.tty and self.done >= self.total:
            print(file=sys.stderr)


def model_uri_for(job: JobSpec) -> str:
    gen = job.generate
    assert gen is not None
    if gen.model:
        return gen.model
    return train_package_uri(job)


def run_key(job: JobSpec, model_sha256: str, date: str) -> dict[str, Any]:
    """What fixes the bytes of a run: everything but scaling (actors, batch size, GPUs)."""
    gen = job.generate
    assert gen is not None
    spec = gen.model_dump(mode="json", exclude={"scaling"}, exclude_none=True)
    spec.pop("model", None)
    key = {"job": job.name, "date": date, "model_sha256": model_sha256, "generate": spec}
    key["fingerprint"] = sha256(json.dumps(key, sort_keys=True).encode())
    return key


def check_output_is_ours(store: Store) -> None:
    """Refuse an output folder that holds anything but an earlier run of ours (its ``_job.json``).

    Publishing removes files of this run's own plan that no shard lists; the folder must never be
    one that holds a user's data (``generate.output: .`` or a data set's folder).
    """
    if store.exists(JOB_FILE):
        return
    found = [name for name in store.children() if name != LOCK]
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise PipelineError(f"{store.uri}: is not empty ({shown}) and holds no {JOB_FILE} of an earlier run; "
                            "generate writes only into an empty folder or its own output: choose another "
                            "generate.output")


def _check_same_job(store: Store, key: dict[str, Any]) -> None:
    if store.exists(JOB_FILE):
        prev = store.read_json(JOB_FILE)
        if not isinstance(prev, dict) or prev.get("fingerprint") != key["fingerprint"]:
            raise PipelineError(
                f"{store.uri}: holds outputs of a different job spec or model "
                f"(fingerprint {str(prev.get('fingerprint', '?'))[:12] if isinstance(prev, dict) else '?'}… ≠ "
                f"{key['fingerprint'][:12]}…); use another output (e.g. --run-id) or delete it")
    else:
        store.write_json(JOB_FILE, key)


def _remove_orphans(store: Store, shards: list[ShardPlan], expected: set[str], log=print) -> int:
    """Delete what a crashed attempt of this run left: files under images/ and data/ that no committed
    shard lists, and only those whose names this run's own plan could have produced. Nothing else is
    touched, and no symlink is followed or deleted (:meth:`Store.delete`)."""
    by_id = {s.shard_id: s for s in shards}
    ids: dict[str, set[str]] = {}
    entries = store.entries("images") | store.entries("data")
    loose = [rel for rel in entries if rel not in expected]
    stale = [rel for rel in loose if entries[rel]["regular"] and ours(rel, by_id, ids)]
    deleted = store.delete(stale)
    left = len(loose) - len(deleted)
    if left:
        log(f"generate: left {left} file(s) under images/ and data/ that this run did not write "
            f"(e.g. {sorted(set(loose) - set(deleted))[0]}); `aigc verify` lists them as extra")
    return len(deleted)


def run_generate(job: JobSpec, *, date: str | None = None, run_id: str | None = None,
                 address: str | None = None, progress: bool = True, log=print) -> GenerateResult:
    """Generate every item of ``job.generate`` into its output URI, resuming committed shards."""
    gen = job.generate
    if gen is None:
        raise PipelineError(f"job '{job.name}' has no generate stage")
    t0 = time.monotonic()
    date = date or today()
    output = render_output(job, date, run_id)
    store = Store(output, job.storage)

    # 1. model and prompts, checked in the driver before any Ray work
    model_uri = model_uri_for(job)
    pkg = load_package(model_uri, job.storage)
    if pkg.kind == "text":  # a byte-level GPT completes prompts: same shards and commits, its own actor
        from pipeline.complete import run_complete

        return run_complete(job, pkg, store, model_uri=model_uri, date=date, address=address, progress=progress,
                            log=log, t0=t0)
    if gen.text is not None:
        raise PipelineError(f"generate.text: applies to a text model; the model at {model_uri} is an image model")
    cfg_model = pkg.config
    num_classes = cfg_model.num_classes if cfg_model.conditional else None
    if gen.prompts is not None and not cfg_model.conditional:
        raise PipelineError(f"generate.prompts: the model at {model_uri} takes no conditioning; prompts need a conditional model")
    prompts = None
    if gen.prompts is not None:
        # a text generator reads the prompt itself; a label-conditioned one needs each prompt's label
        prompts = load_prompts(gen.prompts, job.storage, num_classes=num_classes,
                               prompt_filter=PromptFilter(gen.safety.blocklist, gen.safety.allowlist),
                               labels_required=cfg_model.text_encoder is None, shard_size=gen.shard_size)
    key = run_key(job, pkg.model_sha256, date)

    check_output_is_ours(store)  # before the lock file: nothing is written into a folder that is not ours
    with store.lock(on_wait=lambda: log(f"generate: another run is writing {output}; waiting for it to finish")):
        return _generate_locked(job, store, output=output, date=date, address=address, progress=progress, log=log,
                                model_uri=model_uri, model_sha256=pkg.model_sha256, num_classes=num_classes,
                                prompts=prompts, key=key, t0=t0)


def _generate_locked(job: JobSpec, store: Store, *, output: str, date: str, address: str | None, progress: bool,
                     log, model_uri: str, model_sha256: str, num_classes: int | None, prompts: PromptSet | None,
                     key: dict, t0: float, make_actor: Callable | None = None,
                     encoder: dict | None = None) -> GenerateResult:
    """Plan, run and publish the shards. ``make_actor(ShardConfig) -> (class, config)`` swaps the
    actor (text completion); ``encoder`` names what wrote the files, in the manifest."""
    gen = job.generate
    assert gen is not None
    # 2. idempotence: a published run is a no-op; a different job in the same place is refused
    if is_published(store):
        manifest = store.read_json("manifest.json")
        if manifest.get("run", {}).get("fingerprint") == key["fingerprint"]:
            c = manifest["counts"]
            log(f"generate: {output} is already complete ({c['items']:,} items); nothing to do")
            return GenerateResult(output, c["items"], c["shards"], c["shards"], c.get("rejected", 0), c["bytes"],
                                  time.monotonic() - t0, skipped=True)
    check_output_is_ours(store)  # again under the lock: the folder may have changed while we waited
    _check_same_job(store, key)

    # 3. shards still to do
    shards = plan_shards(job, prompts, num_classes)
    if not shards:
        raise PipelineError("generate: no items to generate (every prompt was rejected; see the reasons above)")
    done = committed_shards(store)
    todo = [s for s in shards if s.shard_id not in done]
    total_items = sum(s.items for s in shards)
    if done:
        log(f"generate: resuming {output}: {len(shards) - len(todo)}/{len(shards)} shards already committed")
    bar = Progress(sum(s.items for s in todo), enabled=progress)
    if todo:
        _run_shards(job, todo, model_sha256, model_uri, output, date, address, bar, make_actor)

    # 4. publish: every planned shard committed → orphans out → manifest → _SUCCESS
    done = committed_shards(store)
    missing = [s.shard_id for s in shards if s.shard_id not in done]
    if missing:
        raise PipelineError(f"generate: shards {', '.join(missing[:5])} did not commit; rerun to resume")
    planned = {s.shard_id for s in shards}
    expected = {f for sid in planned for f in done[sid]["index"]["files"]}
    _remove_orphans(store, shards, expected, log)
    rejected = prompts.rejected if prompts else []
    files = {JOB_FILE: json_bytes(key)}
    if gen.prompts is not None:
        files[REJECTED] = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rejected).encode()
    shard_recs = {}
    for sid in sorted(planned):
        idx = done[sid]["index"]
        shard_recs[sid] = {"index_sha256": done[sid]["index_sha256"], "items": idx["items"],
                           "files": len(idx["files"]), "bytes": sum(f["size"] for f in idx["files"].values())}
    counts = {
        "items": sum(r["items"] for r in shard_recs.values()),
        "seed_items": gen.seeds.count if gen.seeds else 0,
        "prompt_items": sum(p.n for p in prompts.prompts) if prompts else 0,
        "prompts": len(prompts.prompts) if prompts else 0,
        "rejected": len(rejected),
        "shards": len(shard_recs),
        "files": sum(r["files"] for r in shard_recs.values()),
        "bytes": sum(r["bytes"] for r in shard_recs.values()),
    }
    for sid in planned:  # counts an actor recorded per shard (e.g. rejected completions), summed
        for k, v in done[sid]["index"].get("counts", {}).items():
            counts[k] = counts.get(k, 0) + v
    if counts["items"] != total_items:
        raise PipelineError(f"generate: committed {counts['items']} items but planned {total_items}; rerun to repair")
    publish(store, kind="generate", job=job.name, spec=job.masked(), counts=counts, shards=shard_recs, files=files,
            extra={"run": key, "model_uri": absolute_uri(model_uri), "model_sha256": model_sha256,
                   "encoder": encoder or {"png": "aigc-png/1", "parquet_schema": SCHEMA.to_string()}})
    seconds = time.monotonic() - t0
    return GenerateResult(output, counts["items"], len(shards), len(shards) - len(todo), len(rejected),
                          counts["bytes"], seconds)


def _run_shards(job: JobSpec, todo: list[ShardPlan], model_sha256: str, model_uri: str, output: str,
                date: str, address: str | None, bar: Progress, make_actor: Callable | None = None) -> None:
    import ray

    from pipeline.runtime import ensure_ray

    gen = job.generate
    assert gen is not None
    ensure_ray(address)
    scaling = gen.scaling
    # workers resolve nothing against the driver's working directory: local paths go out absolute
    cfg = ShardConfig(model_uri=absolute_uri(model_uri), model_sha256=model_sha256, output=absolute_uri(output),
                      storage=job.storage,
                      job=job.name, job_seed=gen.seed, date=date, formats=list(gen.formats),
                      batch_size=scaling.batch_size, threads=max(1, round(scaling.num_cpus)),
                      device="cuda" if scaling.num_gpus > 0 else "cpu",
                      # workers of a Ray started before the credentials were set would not see them
                      env=worker_env(job))
    actor, actor_cfg = make_actor(cfg) if make_actor is not None else (ShardGenerator, cfg)
    # One block per shard, so Ray hands each actor call exactly one whole shard.
    ds = ray.data.from_items([s.row() for s in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        actor,
        fn_constructor_kwargs={"cfg": actor_cfg},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(scaling.num_actors, len(todo))),
        # fractional CPUs leave room for Ray Data's own tasks (a full pool can starve them: DESIGN §4)
        num_cpus=scaling.num_cpus,
        num_gpus=scaling.num_gpus or None,
        batch_format="numpy",
    )
    try:
        for row in ds.iter_rows():
            bar.update(int(row["items"]))
    except (StorageError, PackageError, PipelineError):
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; surface the cause in one line
        line = user_error_line(exc) or last_error_line(exc)
        raise PipelineError(f"generate: {line}; committed shards are kept, rerun to resume") from None
