"""The train stage, the same for every family: data → Ray Train fit (resuming) → model package.

    from pipeline.specs import load_job
    from pipeline.train.driver import train
    result = train(load_job("jobs/demo.yaml"), on_progress=print)
    result.package_uri   # outputs/models/demo/<version>

or from the shell: ``aigc train jobs/demo.yaml [--set train.epochs=30]``.

The driver knows no family: it asks the family of ``train.model`` for its data, its checks, its
per-worker loop, the checkpoint parts that have optimizers, and what to export
(:class:`~pipeline.catalog.base.Implementation`). Everything else is here and shared:

* the run folder, its lock (a second run of the job waits), the package already trained from the
  same spec, the resource check;
* ``TorchTrainer`` wiring: ``ScalingConfig``, ``RunConfig`` with ``FailureConfig(max_failures)``
  and ``CheckpointConfig(num_to_keep)``, the loopback rendezvous, live progress through a queue
  actor, Ray's errors as one line;
* resume: the driver picks and checks the checkpoint a rerun continues from (a corrupt or
  incompatible one is a one-line error, not N retries); every worker restores weights,
  optimizers, RNG and epoch from it, after a rerun and after a worker restart alike;
* export: the family's network from the last checkpoint becomes
  ``<root>/models/<job>/<version>/`` (see :mod:`pipeline.package`); ``version`` defaults to the
  first 12 hex digits of the train spec's fingerprint.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pipeline.runtime  # noqa: F401 - sets Ray's loopback env before anything imports Ray
from pipeline.catalog.registry import implementation
from pipeline.errors import PipelineError, user_error_line
from pipeline.package import MODEL_JSON, export_package, train_package_uri, train_version
from pipeline.runtime import watch_nodes
from pipeline.specs.schema import JobSpec, TrainSpec
from pipeline.storage import StorageError, Store, absolute_uri, is_published, package_versions, worker_env
from pipeline.train.checkpoint import LoadedCheckpoint, load_checkpoint
from pipeline.train.rendezvous import torch_config
from pipeline.train.run import RunLocation, drop_untracked, latest_checkpoint, resume_point, run_location
from pipeline.train.worker import LoopConfig, Progress


@dataclass
class TrainResult:
    package_uri: str
    model_sha256: str
    version: str
    run_uri: str
    epochs: int  # epochs trained in total (across resumes)
    global_step: int
    history: list[dict[str, float]]
    epochs_run: list[int]  # epochs trained by this call (0-based)
    resumed_from: int | None  # last epoch of the checkpoint this call started from
    skipped: bool  # True: a package from the same spec already existed; nothing trained
    seconds: float
    data: dict = field(default_factory=dict)
    detail: str = ""  # the family's one line about it (epochs, losses, held-out figures)
    usage: dict = field(default_factory=dict)  # the workers' CPU- and GPU-seconds of this call's fit (if it fit)


def package_version(job: JobSpec) -> str:
    """``train.version``, or the first 12 hex digits of the train spec's fingerprint."""
    return train_version(job)


def existing_package(job: JobSpec) -> str | None:
    """URI of a published model package trained from exactly this train spec, else None."""
    if job.train is None:
        return None
    uri = train_package_uri(job)
    try:
        store = Store(uri, job.storage)
        if not is_published(store):
            return None
        meta = store.read_json(MODEL_JSON)
    except StorageError:
        return None
    return uri if isinstance(meta, dict) and meta.get("train_fingerprint") == job.fingerprint("train") else None


def _check_resumable(ck: LoadedCheckpoint, job: JobSpec, data: Any) -> None:
    t = job.train
    assert t is not None
    saved = ck.state.get("spec", {}).get("train", {})
    if saved.get("model") != t.model.model_dump(mode="json", exclude_none=True):
        raise PipelineError(f"{ck.where}: was trained with a different train.model; set train.checkpoint.resume=false "
                            "or use another job name")
    if ck.state.get("data_fingerprint") != data.fingerprint:
        raise PipelineError(f"{ck.where}: was trained on different data (dataset fingerprint changed); "
                            "set train.checkpoint.resume=false or use another job name")
    if ck.epoch + 1 > t.epochs:
        raise PipelineError(f"{ck.where}: this run already trained {ck.epoch + 1} epochs, more than train.epochs="
                            f"{t.epochs}; raise train.epochs or set train.checkpoint.resume=false")


def _training_error(exc: BaseException) -> PipelineError:
    failures = list(getattr(exc, "worker_failures", {}).values()) if hasattr(exc, "worker_failures") else []
    for e in [exc, *failures]:
        line = user_error_line(e)
        if line is not None:
            return PipelineError(line)
    root = failures[0] if failures else exc
    text = [line for line in str(root).strip().splitlines() if line.strip()]
    return PipelineError(f"training failed: {(text[-1] if text else type(root).__name__)[:300]}")


def _check_resources(t: TrainSpec, embedded: bool) -> None:
    import ray

    if not embedded:
        return  # a real cluster may autoscale; let Ray wait for it
    have = ray.cluster_resources()
    s = t.scaling
    need = {"CPU": s.num_workers * s.cpus_per_worker,
            **{k: v * s.num_workers for k, v in s.resources_per_worker.items()}}
    if s.use_gpu:
        need["GPU"] = need.get("GPU", 0) + s.num_workers
    for k, v in need.items():
        if have.get(k, 0) < v:
            raise PipelineError(f"train.scaling: {s.num_workers} worker(s) need {v:g} {k} in all, but this Ray has "
                                f"{have.get(k, 0):g}; lower train.scaling.num_workers or cpus_per_worker")


def _run_fit(job: JobSpec, run: RunLocation, data: Any, on_progress: Callable[[Progress], None] | None,
             loop: Callable[[dict], None]) -> Any:
    """One TorchTrainer fit of the family's per-worker ``loop``."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.config import LoggingConfig
    from ray.util.queue import Empty, Queue

    t = job.train
    assert t is not None
    queue = Queue(actor_options={"num_cpus": 0}) if on_progress is not None else None
    # A family's data either travels as a Ray Data dataset that every worker reads whole (``data.dataset``) or
    # is streamed by the workers themselves (an image family's data cache, pipeline.image.stream): then only
    # where it is travels, in the loop's config.
    dataset = getattr(data, "dataset", None)
    cfg = LoopConfig(job=job, run=run, data_fingerprint=data.fingerprint, progress=queue, classes=data.classes,
                     env=worker_env(job), data=None if dataset is not None else data)
    try:  # Ray checks scaling and run settings here; a refusal is the user's to fix, in one line
        trainer = TorchTrainer(
            loop,
            train_loop_config={"cfg": cfg},
            torch_config=torch_config(),
            scaling_config=ScalingConfig(num_workers=t.scaling.num_workers, use_gpu=t.scaling.use_gpu,
                                         resources_per_worker={"CPU": t.scaling.cpus_per_worker,
                                                               **t.scaling.resources_per_worker}),
            run_config=RunConfig(name=run.name, storage_path=run.storage_path, storage_filesystem=run.fs,
                                 failure_config=FailureConfig(max_failures=t.checkpoint.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoint.keep),
                                 logging_config=LoggingConfig(log_level="WARNING")),
            datasets={"train": dataset} if dataset is not None else None,
            # Every worker gets the whole dataset; each takes its deterministic slice per epoch.
            dataset_config=DataConfig(datasets_to_split=[]) if dataset is not None else None,
        )
    except (ValueError, TypeError) as exc:
        if queue is not None:
            with contextlib.suppress(Exception):
                ray.kill(queue.actor)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PipelineError(f"train.scaling: Ray refused the training settings ({first})") from None
    stop = threading.Event()

    def pump() -> None:
        while True:
            try:
                on_progress(queue.get(timeout=0.25))
            except Empty:
                if stop.is_set():
                    return
            except Exception:  # noqa: BLE001 - the queue actor is gone
                return

    # (a Queue is falsy while empty: compare with None)
    pumper = threading.Thread(target=pump, name="aigc-train-progress", daemon=True) if queue is not None else None
    if pumper:
        pumper.start()
    try:
        with watch_nodes("train", "Ray Train restarts the workers from the last checkpoint once the cluster has "
                                  "room for them"):
            return trainer.fit()
    except PipelineError:
        raise
    except Exception as exc:  # noqa: BLE001 - TrainingFailedError and friends
        raise _training_error(exc) from exc
    finally:
        stop.set()
        if pumper:
            pumper.join(timeout=10)
        if queue is not None:
            with contextlib.suppress(Exception):
                ray.kill(queue.actor)


def train(job: JobSpec, *, on_progress: Callable[[Progress], None] | None = None,
          address: str | None = None) -> TrainResult:
    """Run the train stage: data → Ray Train fit (resuming) → model package. Returns where it went.

    A package already trained from the same spec is returned as is (``skipped=True``).
    """
    from pipeline.runtime import ensure_ray

    started = time.perf_counter()
    t = job.train
    if t is None:
        raise PipelineError("the job has no train stage")
    version = package_version(job)
    pkg_uri = train_package_uri(job)
    found = existing_package(job)
    if found:
        return _skipped(job, found, started)
    if is_published(Store(pkg_uri, job.storage)):
        raise PipelineError(f"{pkg_uri}: a model package of version '{version}' already exists from a different "
                            "train spec; set another train.version")

    fresh = None if t.checkpoint.resume else dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    run = run_location(job, fresh)
    embedded = ensure_ray(address)
    _check_resources(t, embedded or not (address or os.environ.get("RAY_ADDRESS")))

    def waiting() -> None:
        if on_progress is not None:
            on_progress(Progress("wait", 0, t.epochs))

    # One run of a job at a time (local storage): a second one waits, then finds the package.
    with Store(run.uri, job.storage).lock(on_wait=waiting):
        found = existing_package(job)
        if found:  # the run we waited for made it
            return _skipped(job, found, started)
        return _train_locked(job, run, on_progress, started)


def _skipped(job: JobSpec, uri: str, started: float) -> TrainResult:
    meta = Store(uri, job.storage).read_json(MODEL_JSON)
    return TrainResult(package_uri=uri, model_sha256=meta.get("model_sha256", ""), version=package_version(job),
                       run_uri=meta.get("run", ""), epochs=meta.get("epochs", 0),
                       global_step=meta.get("global_step", 0), history=meta.get("metrics", []), epochs_run=[],
                       resumed_from=None, skipped=True, seconds=time.perf_counter() - started,
                       data=meta.get("data", {}))


def _train_locked(job: JobSpec, run: RunLocation, on_progress: Callable[[Progress], None] | None,
                  started: float) -> TrainResult:
    """Data (checked in the driver) → fit from the last checkpoint → the family's export."""
    t = job.train
    assert t is not None
    impl = implementation(t.model)
    data = impl.load_data(job)
    impl.check_data(job, data)
    ck, resumed_from = fit_from_last_checkpoint(job, run, data, on_progress, loop=impl.loop, parts=impl.parts)
    model, config, meta = impl.export(job, ck, data)
    return export_result(job, run, data, ck, resumed_from, started, model, config, **meta)


def fit_from_last_checkpoint(job: JobSpec, run: RunLocation, data: Any, on_progress: Callable[[Progress], None] | None,
                             loop: Callable[[dict], None],
                             parts: tuple[str, ...]) -> tuple[LoadedCheckpoint, int | None]:
    """Resume from the newest complete checkpoint (checked here, once) or start; fit up to
    ``train.epochs``; return the last checkpoint and the epoch this call resumed after (or None)."""
    t = job.train
    assert t is not None

    def load(latest: Any) -> LoadedCheckpoint:
        with latest.as_directory() as d:
            return load_checkpoint(d, f"{run.uri}/{os.path.basename(latest.path.rstrip('/'))}", parts=parts)

    latest = resume_point(run, latest_checkpoint(run)) if t.checkpoint.resume else None
    resumed_from = None
    if latest is not None:
        ck = load(latest)
        _check_resumable(ck, job, data)
        resumed_from = ck.epoch
    if resumed_from is None or resumed_from + 1 < t.epochs:
        result = _run_fit(job, run, data, on_progress, loop=loop)
        latest = result.checkpoint
        drop_untracked(run, result)
    if latest is None:
        raise PipelineError(f"{run.uri}: training finished without a checkpoint")
    return load(latest), resumed_from


def export_result(job: JobSpec, run: RunLocation, data: Any, ck: LoadedCheckpoint, resumed_from: int | None,
                  started: float, model: Any, config: Any, **meta: Any) -> TrainResult:
    """Export ``model`` (restored from ``ck``) as the job's package; ``meta`` adds to its model.json."""
    t = job.train
    assert t is not None
    version, pkg_uri = package_version(job), train_package_uri(job)
    history = ck.state["history"]
    meta = {"job": job.name, "version": version, "train_fingerprint": job.fingerprint("train"),
            "train": t.model_dump(mode="json", exclude_none=True), "data": data.summary(), "metrics": history,
            "epochs": ck.epoch + 1, "global_step": int(ck.state["global_step"]), "run": absolute_uri(run.uri),
            "checkpoint": absolute_uri(ck.where), **meta, "versions": package_versions(),
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    model_sha = export_package(pkg_uri, model, config, meta, job.storage, job.name)
    first_run = 0 if resumed_from is None else resumed_from + 1
    return TrainResult(package_uri=pkg_uri, model_sha256=model_sha, version=version, run_uri=run.uri,
                       epochs=ck.epoch + 1, global_step=int(ck.state["global_step"]), history=history,
                       epochs_run=list(range(first_run, ck.epoch + 1)), resumed_from=resumed_from, skipped=False,
                       seconds=time.perf_counter() - started, data=data.summary(),
                       detail=implementation(t.model).describe(history, data.summary()),
                       usage=dict(ck.state.get("usage") or {}) if first_run <= ck.epoch else {})
