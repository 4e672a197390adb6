"""Bulk generation: seeds and prompts → committed asset shards in any storage, for any family.

    aigc generate jobs/demo.yaml --date 2026-11-28

How a job becomes bytes (the invariants of ``docs/architecture.md``):

1. **Plan.** Items and fixed shards are cut from the spec alone (:mod:`pipeline.generate.plan`).
2. **Check.** The model package is loaded and checked in the driver; its family says whether it
   takes seeds and prompts and which labels a prompt needs; prompts are read and filtered.
3. **Ray Data.** One row per shard still to do; ``map_batches`` runs
   :class:`~pipeline.generate.actor.ShardWorker` (the package loaded once per actor, the family's
   sampler inside) on an ``ActorPoolStrategy`` pool; each shard is written and committed by its actor.
4. **Publish.** When every shard is committed: this run's own leftovers removed, ``manifest.json``
   then ``_SUCCESS``. A rerun skips committed shards; a rerun of a published job is a no-op.

Item bytes depend only on (spec, model package, item), never on actor count or retries.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from pipeline.catalog.registry import family_of, implementation
from pipeline.cost import estimate
from pipeline.errors import PackageError, PipelineError, StorageError, last_error_line, user_error_line
from pipeline.generate.actor import REQUEST_COLUMNS, ShardConfig, ShardWorker
from pipeline.generate.plan import ShardPlan, ours, plan_shards
from pipeline.layout import JOB_FILE, REJECTED
from pipeline.package import load_package, train_package_uri
from pipeline.prompts import PromptSet, load_prompts
from pipeline.safety import PromptFilter
from pipeline.specs.loading import render_output, today
from pipeline.specs.schema import JobSpec
from pipeline.storage import (
    LOCK,
    Store,
    absolute_uri,
    committed_shards,
    is_published,
    json_bytes,
    publish,
    sha256,
    worker_env,
)
from pipeline.terminal import StageProgress


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
    usage: dict = field(default_factory=dict)  # what this call used (pipeline.cost): CPU/GPU-s, requests, bytes

    @property
    def items_per_s(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def model_uri_for(job: JobSpec) -> str:
    gen = job.generate
    assert gen is not None
    if gen.model:
        return gen.model
    return train_package_uri(job)


def run_key(job: JobSpec, model_sha256: str, date: str, encoder: dict | None = None) -> dict[str, Any]:
    """What fixes the bytes of a run: everything but scaling (actors, batch size, GPUs), plus the
    versions of what writes the files (``encoder``), so a release that writes other bytes never
    resumes or skips an output of an earlier one."""
    gen = job.generate
    assert gen is not None
    spec = gen.model_dump(mode="json", exclude={"scaling"}, exclude_none=True)
    spec.pop("model", None)
    key = {"job": job.name, "date": date, "model_sha256": model_sha256, "generate": spec,
           **({"encoder": encoder} if encoder else {})}
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
    t0, cpu0 = time.monotonic(), time.process_time()
    date = date or today()
    output = render_output(job, date, run_id)
    store = Store(output, job.storage)

    # 1. model and prompts, checked in the driver before any Ray work; the family says what fits
    model_uri = model_uri_for(job)
    pkg = load_package(model_uri, job.storage)
    fam, impl = family_of(pkg.config), implementation(pkg.config)
    _check_family(job, fam, model_uri)
    impl.check_generate(job, pkg.config, model_uri)
    prompts = None
    if gen.prompts is not None:
        num_classes, labels_required = impl.prompt_labels(pkg.config)
        prompts = load_prompts(gen.prompts, job.storage, num_classes=num_classes,
                               prompt_filter=PromptFilter(gen.safety.blocklist, gen.safety.allowlist),
                               labels_required=labels_required, shard_size=gen.shard_size)
    encoder = impl.manifest_encoder(pkg.config)
    key = run_key(job, pkg.model_sha256, date, encoder)

    check_output_is_ours(store)  # before the lock file: nothing is written into a folder that is not ours
    with store.lock(on_wait=lambda: log(f"generate: another run is writing {output}; waiting for it to finish")):
        return _generate_locked(job, store, output=output, date=date, address=address, progress=progress, log=log,
                                model_uri=model_uri, model_sha256=pkg.model_sha256, prompts=prompts, key=key, t0=t0,
                                cpu0=cpu0,
                                formats=[f for f in gen.formats if f in fam.formats] or list(fam.formats),
                                options=impl.sampler_options(job), encoder=encoder)


def _check_family(job: JobSpec, fam: Any, model_uri: str) -> None:
    """The generate settings the model's family takes (the spec checked them already when the job
    trains the model; a job that names generate.model is checked here, against the package)."""
    gen = job.generate
    assert gen is not None
    where = f"the model at {model_uri} is a {fam.arch} model"
    if gen.seeds is not None and not fam.seeds:
        raise PipelineError(f"generate.seeds: {where}, which does not generate from latent seeds; use generate.prompts")
    odd = [f for f in gen.formats if f not in fam.formats]
    if odd and "formats" in gen.model_fields_set:
        raise PipelineError(f"generate.formats: {where}, which writes {', '.join(fam.formats)} only")
    for option in ("text", "provenance"):
        if getattr(gen, option) is not None and option not in fam.generate_options:
            raise PipelineError(f"generate.{option}: does not apply: {where}")


def _generate_locked(job: JobSpec, store: Store, *, output: str, date: str, address: str | None, progress: bool,
                     log, model_uri: str, model_sha256: str, prompts: PromptSet | None, key: dict, t0: float,
                     cpu0: float, formats: list[str], options: Any, encoder: dict) -> GenerateResult:
    """Plan, run and publish the shards; ``encoder`` names what wrote the files, in the manifest."""
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
    shards = plan_shards(job, prompts)
    if not shards:
        raise PipelineError("generate: no items to generate (every prompt was rejected; see the reasons above)")
    done = committed_shards(store)
    todo = [s for s in shards if s.shard_id not in done]
    total_items = sum(s.items for s in shards)
    if done:
        log(f"generate: resuming {output}: {len(shards) - len(todo)}/{len(shards)} shards already committed")
    if todo:
        # one display for the stage: a live bar on a terminal, else a line every N s and a summary
        with StageProgress("generate", sum(s.items for s in todo), unit="items", enabled=progress) as bar:
            used = _run_shards(job, todo, model_sha256, model_uri, output, date, address, bar, formats, options)
    else:
        used = {}

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
    usage = _usage(used, store, time.process_time() - cpu0, len(files))
    extra = {"run": key, "model_uri": absolute_uri(model_uri), "model_sha256": model_sha256, "encoder": encoder,
             "usage": usage}
    if job.cost is not None:  # this call's cost; the run record adds the other stages'
        extra["cost"] = estimate({"generate": usage}, job.cost.model_dump())
    publish(store, kind="generate", job=job.name, spec=job.masked(), counts=counts, shards=shard_recs, files=files,
            extra=extra)
    seconds = time.monotonic() - t0
    return GenerateResult(output, counts["items"], len(shards), len(shards) - len(todo), len(rejected),
                          counts["bytes"], seconds, usage=usage)


def _usage(used: dict[str, float], store: Store, driver_cpu: float, n_top: int) -> dict[str, Any]:
    """This call's usage: the actors' own CPU- and GPU-seconds (summed from their shard summaries) and the
    driver's CPU time; the requests of the actors' stores and the driver's; the bytes and items it wrote."""
    requests: dict[str, int] = {}
    for col, kind in REQUEST_COLUMNS.items():
        if col in used:
            requests[kind] = requests.get(kind, 0) + int(used[col])
    for k, v in store.requests().items():  # the driver's own store: listing, indexes, the lock, the job file
        requests[k] = requests.get(k, 0) + int(v)
    if not store.local:  # what publish() is about to PUT: the top-level files, manifest.json, _SUCCESS
        requests["PUT"] = requests.get("PUT", 0) + n_top + 2
    return {"cpu_s": round(used.get("cpu_s", 0.0) + driver_cpu, 2), "gpu_s": round(used.get("gpu_s", 0.0), 2),
            "requests": dict(sorted(requests.items())), "bytes": int(used.get("bytes", 0)),
            "items": int(used.get("items", 0))}


def _run_shards(job: JobSpec, todo: list[ShardPlan], model_sha256: str, model_uri: str, output: str,
                date: str, address: str | None, bar: StageProgress, formats: list[str],
                options: Any) -> dict[str, float]:
    import ray

    from pipeline.runtime import ensure_ray, watch_nodes

    gen = job.generate
    assert gen is not None
    ensure_ray(address, dashboard=False)  # an embedded Ray for generation alone needs no dashboard
    scaling = gen.scaling
    # workers resolve nothing against the driver's working directory: local paths go out absolute
    cfg = ShardConfig(model_uri=absolute_uri(model_uri), model_sha256=model_sha256, output=absolute_uri(output),
                      storage=job.storage,
                      job=job.name, job_seed=gen.seed, date=date, formats=formats, options=options,
                      batch_size=scaling.batch_size,
                      # one intra-op thread per actor, whatever num_cpus: float reductions split differently
                      # across thread counts, so another count would change rare bytes (docs/architecture.md)
                      threads=1,
                      device="cuda" if scaling.num_gpus > 0 else "cpu", gpu_share=scaling.num_gpus,
                      # workers of a Ray started before the credentials were set would not see them
                      env=worker_env(job))
    # One block per shard, so Ray hands each actor call exactly one whole shard.
    ds = ray.data.from_items([s.row() for s in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        ShardWorker,
        fn_constructor_kwargs={"cfg": cfg},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(scaling.num_actors, len(todo))),
        # fractional CPUs leave room for Ray Data's own tasks (a full pool can starve them: docs/architecture.md)
        num_cpus=scaling.num_cpus,
        num_gpus=scaling.num_gpus or None,
        batch_format="numpy",
    )
    used: dict[str, float] = {}  # summed over the shards: items, bytes, the actors' cpu_s/gpu_s, requests_*
    # Closed on every way out: a failed run's executor (and its actor pool, which holds CPUs) is shut down
    # now, not whenever the traceback that references the iterator is collected.
    rows = iter(ds.iter_rows())
    try:
        with watch_nodes("generate", "its shards in flight are redone on the nodes left; committed ones are kept"):
            for row in rows:
                bar.update(int(row["items"]))
                for k, v in row.items():
                    if k in ("items", "bytes", "cpu_s", "gpu_s") or k in REQUEST_COLUMNS:
                        used[k] = used.get(k, 0) + float(v)
    except (StorageError, PackageError, PipelineError):
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; surface the cause in one line
        line = user_error_line(exc) or last_error_line(exc)
        raise PipelineError(f"generate: {line}; committed shards are kept, rerun to resume") from None
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
    return used
