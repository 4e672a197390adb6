"""What every family's training loop shares on a Ray Train worker: its config, progress events,
the per-epoch data order, the checkpoint it resumes from, and the end of an epoch.

A family's loop (``Implementation.loop``) is a module-level function ``loop(config)``; it reads
``config["cfg"]`` (a :class:`LoopConfig`), applies ``cfg.env``, and calls
:func:`checkpoint_on_worker` at the start and :func:`report_epoch` at the end of every epoch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.layout import checkpoint_dir_name, samples_path
from pipeline.specs.schema import JobSpec
from pipeline.storage import WorkerEnv
from pipeline.train.checkpoint import OPTIM_FILE, LoadedCheckpoint, load_checkpoint, load_rng, save_rng, unwrap  # noqa: F401 - unwrap: for the loops
from pipeline.train.run import RunLocation, resume_point

PROGRESS_EVERY_S = 2.0


@dataclass
class Progress:
    """One live progress event, sent by rank 0 to the driver."""

    kind: str  # "start" | "step" | "epoch" | "wait"
    epoch: int
    epochs: int
    step: int = 0
    steps: int = 0
    global_step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    resumed_from: int | None = None  # "start": the checkpointed epoch this attempt continues after
    world_size: int = 1
    nodes: int = 1  # distinct Ray nodes the workers run on

    def line(self) -> str:
        """One human line; epochs count from 1 here (checkpoints and metrics count from 0)."""
        if self.kind == "wait":
            return "another run of this job is training; waiting for it to finish"
        if self.kind == "start":
            where = (f"resuming after epoch {self.resumed_from + 1}" if self.resumed_from is not None else "starting")
            return f"{where}: epoch {self.epoch + 1}/{self.epochs} on {self.world_size} worker(s), {self.nodes} node(s)"
        return self.metrics_line()

    def metrics_line(self) -> str:
        """A "step" or "epoch" event's line; a family's own event class says what its metrics mean."""
        shown = "  ".join(f"{k} {v:.3f}" for k, v in self.metrics.items() if isinstance(v, float))
        done = " done" if self.kind == "epoch" else f"  step {self.step}/{self.steps}"
        return f"epoch {self.epoch + 1}/{self.epochs}{done}  {shown}"


@dataclass
class LoopConfig:
    """Everything one training worker needs; travels to the workers inside ``train_loop_config``."""

    job: JobSpec
    run: RunLocation
    data_fingerprint: str
    progress: Any = None  # ray.util.queue.Queue for live progress, or None
    classes: list[str] = field(default_factory=list)  # class names by label id (captions for a text encoder)
    env: WorkerEnv = field(default_factory=WorkerEnv)  # storage credentials: in the task, never in a Ray log
    data: Any = None  # the family's training data as the workers read it (an image family's TrainData)


def mix(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


@dataclass
class Worker:
    """One Ray Train worker's place in the run: its config, rank, world size and device."""

    cfg: LoopConfig
    rank: int
    world: int
    device: Any

    def progress(self, event: Progress) -> None:
        """Send a live progress event to the driver (rank 0 only; best effort, never a reason to fail)."""
        if self.rank == 0 and self.cfg.progress is not None:
            with contextlib.suppress(Exception):
                self.cfg.progress.put_nowait(event)

    def resume(self, parts: tuple[str, ...]) -> tuple[LoadedCheckpoint | None, tuple | None]:
        """The checkpoint to continue from and this rank's RNG state in it (see :func:`checkpoint_on_worker`)."""
        return checkpoint_on_worker(self.cfg, self.rank, self.world, parts=parts)


def start_worker(config: dict) -> Worker:
    """The first call of every family's loop: storage credentials applied, Ray's INFO lines quietened."""
    import ray.train
    import ray.train.torch

    cfg: LoopConfig = config["cfg"]
    cfg.env.apply()
    quiet_worker_logs()
    ctx = ray.train.get_context()
    return Worker(cfg=cfg, rank=ctx.get_world_rank(), world=ctx.get_world_size(), device=ray.train.torch.get_device())


def resumed(ck: LoadedCheckpoint | None) -> tuple[int, int, list[dict], int | None]:
    """(first epoch to train, global step, metrics history, epoch resumed after) from a checkpoint, or a fresh
    start's (0, 0, [], None)."""
    if ck is None:
        return 0, 0, [], None
    return ck.epoch + 1, int(ck.state["global_step"]), list(ck.state["history"]), ck.epoch


def restore_optimizer(ck: LoadedCheckpoint, name: str, opt: torch.optim.Optimizer, **spec: Any) -> None:
    """An optimizer's state from a checkpoint part; ``spec`` (lr, betas, ...) wins over what was saved."""
    try:
        opt.load_state_dict(ck.optimizer_state(name))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise PipelineError(f"{ck.where}/{OPTIM_FILE}: {name} optimizer state does not fit ({exc})") from None
    for group in opt.param_groups:  # the spec is the source of truth for hyper-parameters
        group.update(spec)


def seed_worker(seed: int, rank: int) -> None:
    """A fresh start's python, numpy and torch RNGs on this rank, from (seed, rank) alone (a resume
    restores the checkpoint's states instead)."""
    random.seed(mix(seed, "python", rank))
    np.random.seed(mix(seed, "numpy", rank) % 2**32)
    torch.manual_seed(mix(seed, "torch", rank))


def world_nodes(world: int) -> int:
    """How many distinct Ray nodes the ranks run on (a collective: every rank calls it)."""
    import ray

    nodes = [ray.get_runtime_context().get_node_id()] * world
    if world > 1:  # Distributed: which Ray node each rank runs on, for the start line
        torch.distributed.all_gather_object(nodes, nodes[0])
    return len(set(nodes))


def steps_per_epoch(n: int, world: int, batch_size: int) -> int:
    return (-(-n // world)) // batch_size


def epoch_indices(n: int, epoch: int, rank: int, world: int, seed: int) -> torch.Tensor:
    """This rank's example indices for an epoch: its slice of a permutation seeded by (seed, epoch).

    Padded like torch's DistributedSampler so that every rank takes the same number of steps
    (DDP hangs when one rank runs a step the others do not).
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(mix(seed, epoch)))
    total = -(-n // world) * world
    if total > n:
        perm = torch.cat([perm, perm[: total - n]])
    return perm[rank::world]


def no_sync(m: nn.Module):
    # Distributed only: skip the all-reduce of D's gradients from the G update (they are discarded).
    return m.no_sync() if isinstance(m, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()


def _write_run_file(cfg: LoopConfig, rel: str, data: bytes) -> None:
    path = f"{cfg.run.path}/{rel}"
    cfg.run.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with cfg.run.fs.open_output_stream(path) as f:
        f.write(data)


def quiet_worker_logs() -> None:
    """Keep Ray's per-epoch INFO lines ("Reporting training result ...") off the user's terminal."""
    import logging

    names = ["ray.train", "ray.data"]
    with contextlib.suppress(ImportError):  # this one logs under its file path, not under "ray.train"
        from ray.train.v2._internal.execution import context

        names.append(context.__file__)
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def checkpoint_on_worker(cfg: LoopConfig, rank: int, world: int, parts: tuple[str, ...] = ("G", "D")
                         ) -> tuple[LoadedCheckpoint | None, tuple | None]:
    """The checkpoint this worker resumes from (rank 0 chooses; after a resume or a worker
    restart) and this rank's RNG state in it; (None, None) for a fresh start."""
    import ray.train

    chosen = [None]
    if rank == 0:
        found = resume_point(cfg.run, ray.train.get_checkpoint())
        chosen = [found.path if found is not None else None]
    if world > 1:  # Distributed: every rank resumes from the checkpoint rank 0 chose
        torch.distributed.broadcast_object_list(chosen, src=0)
    if not chosen[0]:
        return None, None
    checkpoint = ray.train.Checkpoint(chosen[0], filesystem=cfg.run.fs)
    with checkpoint.as_directory() as d:
        where = f"{cfg.run.uri}/{os.path.basename(checkpoint.path.rstrip('/'))}"
        return load_checkpoint(d, where, parts=parts), load_rng(d, rank, where)


def write_samples(cfg: LoopConfig, directory: str, epoch: int, data: bytes, ext: str) -> None:
    """An epoch's samples: into its checkpoint, and beside the run (``samples/epoch_NNNN.<ext>``)."""
    with open(os.path.join(directory, f"samples.{ext}"), "wb") as f:
        f.write(data)
    _write_run_file(cfg, samples_path(epoch, ext), data)


_STARTED = time.monotonic()  # this worker process's start (its module import), for GPU-seconds


def worker_usage() -> dict[str, float]:
    """CPU-seconds (user + system, every thread) and GPU-seconds of every worker process of the run so far,
    summed over the ranks (an all-reduce when a process group is up): each process's own use, not wall
    time times slots. A GPU-second is a second a worker held its GPU (CUDA keeps no busy-time counter).
    ``peak_rss_mb`` is the largest worker's peak resident memory (what the data stream keeps flat)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    gpu = time.monotonic() - _STARTED if torch.cuda.is_available() and torch.cuda.is_initialized() else 0.0
    x = torch.tensor([ru.ru_utime + ru.ru_stime, gpu, 1.0], dtype=torch.float64)
    peak = torch.tensor([ru.ru_maxrss / 1024.0], dtype=torch.float64)  # KiB on Linux
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else x.device
        y, p = x.to(on), peak.to(on)
        dist.all_reduce(y)
        dist.all_reduce(p, op=dist.ReduceOp.MAX)
        x, peak = y.cpu(), p.cpu()
    cpu, gpu, workers = x.tolist()
    return {"cpu_s": round(cpu, 2), "gpu_s": round(gpu, 2), "workers": int(workers),
            "peak_rss_mb": round(float(peak.item()), 1)}


def report_epoch(cfg: LoopConfig, epoch: int, rank: int, metrics: dict[str, Any], history: list[dict],
                 write: Callable[[str, dict], None], **state: Any) -> None:
    """End an epoch on one worker: rank 0 calls ``write(directory, state)`` to put the models,
    optimizers, ``state`` and samples into the checkpoint; every rank adds its RNG; all report.
    ``metrics`` (the dict the loop appended to ``history``) gains ``peak_rss_mb``, the largest worker's
    peak resident memory so far."""
    import ray.train

    used = worker_usage()  # a collective: every rank reaches it here, at the same epoch
    metrics["peak_rss_mb"] = used["peak_rss_mb"]  # the largest worker's peak so far: its history shows any growth
    with tempfile.TemporaryDirectory(prefix="aigc-ckpt-") as tmp:
        if rank == 0:
            full = {"epoch": epoch, "global_step": metrics["global_step"], "history": history, **state,
                    "usage": used,
                    "data_fingerprint": cfg.data_fingerprint, "train_fingerprint": cfg.job.fingerprint("train"),
                    "spec": cfg.job.masked(),
                    "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            write(tmp, full)
        save_rng(tmp, rank)
        # Distributed: every rank reports (a barrier); Ray merges their files into one checkpoint folder.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=checkpoint_dir_name(epoch))
