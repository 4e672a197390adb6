"""The Ray Train run folder of a job and the checkpoint a run resumes from.

``<storage.root>/checkpoints/<job>/`` (``<job>-<UTC time>`` for ``checkpoint.resume: false``) holds
Ray Train V2's ``checkpoint_manager_snapshot.json``, one ``epoch_NNNN/`` folder per kept
checkpoint, and ``samples/``. Ray registers a reported checkpoint only when its controller next
polls, so after a crash the folder may hold newer complete checkpoints than Ray knows:
:func:`resume_point` takes the newest complete one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from pipeline.checks import uri_scheme
from pipeline.errors import PipelineError
from pipeline.layout import checkpoints_uri
from pipeline.specs.schema import JobSpec
from pipeline.storage import open_fs, pyarrow_fs
from pipeline.train.checkpoint import MODELS_FILE, OPTIM_FILE, STATE_FILE, rng_file


@dataclass
class RunLocation:
    """Where Ray Train keeps a run: ``storage_path/name`` on a pyarrow filesystem."""

    name: str
    uri: str  # the run folder as a URI, for people
    storage_path: str  # parent folder, as a path on ``fs``
    fs: Any  # pyarrow.fs.FileSystem

    @property
    def path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"


def run_location(job: JobSpec, fresh_suffix: str | None = None) -> RunLocation:
    """The Ray Train run folder of a job: ``<root>/checkpoints/<name>`` (``<name>-<suffix>`` for fresh runs)."""
    root = job.storage.root.rstrip("/")
    if uri_scheme(root) == "memory":
        raise PipelineError(f"storage.root: {root}: memory:// lives in one process; Ray Train workers cannot share it "
                            "(use a local path, s3:// or gs://)")
    if uri_scheme(root) == "file":
        root = os.path.abspath(root[len("file://"):] if root.startswith("file://") else root)  # workers chdir
    fs, path = open_fs(checkpoints_uri(root), job.storage)
    name = job.name if fresh_suffix is None else f"{job.name}-{fresh_suffix}"
    return RunLocation(name=name, uri=f"{checkpoints_uri(root)}/{name}", storage_path=path, fs=pyarrow_fs(fs))


def epoch_of(path: str) -> int | None:
    m = re.fullmatch(r"epoch_(\d+)", path.rstrip("/").rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


def _complete(run: RunLocation, path: str) -> bool:
    """Every file of a checkpoint folder is there, at its recorded size (every rank has reported)."""
    import pyarrow.fs as pafs

    try:
        with run.fs.open_input_stream(f"{path}/{STATE_FILE}") as f:
            state = json.loads(f.read())
        names = [MODELS_FILE, OPTIM_FILE] + [rng_file(r) for r in range(int(state["world_size"]))]
        infos = {i.base_name: i for i in run.fs.get_file_info([f"{path}/{n}" for n in names])}
        return all(infos[n].type == pafs.FileType.File for n in names) and all(
            infos[n].size == state["files"][n]["size"] for n in (MODELS_FILE, OPTIM_FILE))
    except Exception:  # noqa: BLE001 - unreadable or half-written: not complete
        return False


def checkpoint_folders(run: RunLocation) -> list[str]:
    """``epoch_NNNN`` folders in the run folder, newest first."""
    import pyarrow.fs as pafs

    try:
        infos = run.fs.get_file_info(pafs.FileSelector(run.path, allow_not_found=True))
    except Exception:  # noqa: BLE001 - no run folder yet
        return []
    found = [i.path for i in infos if i.type == pafs.FileType.Directory and epoch_of(i.path) is not None]
    return sorted(found, key=lambda p: epoch_of(p), reverse=True)


def resume_point(run: RunLocation, registered: Any) -> Any:
    """The checkpoint to continue from: Ray's latest registered one, or a newer complete one.

    Ray Train V2 registers a reported checkpoint when its controller next polls the workers
    (every 2 s, one report at a time), so after a crash the run folder can hold complete
    checkpoints newer than the one ``ray.train.get_checkpoint()`` returns. Resuming from the
    newest complete one loses no finished epoch. Returns a ``ray.train.Checkpoint`` or None.
    """
    from ray.train import Checkpoint

    floor = epoch_of(registered.path) if registered is not None else None
    for path in checkpoint_folders(run):
        if floor is not None and epoch_of(path) <= floor:
            break
        if _complete(run, path):
            return Checkpoint(path, filesystem=run.fs)
    return registered


def latest_checkpoint(run: RunLocation) -> Any:
    """The checkpoint Ray Train will hand to the workers when this run resumes, or None."""
    import pyarrow.fs as pafs
    from ray.train import Result

    info = run.fs.get_file_info(f"{run.path}/checkpoint_manager_snapshot.json")
    if info.type == pafs.FileType.NotFound:
        return None
    try:
        return Result.from_path(run.path, storage_filesystem=run.fs).checkpoint
    except Exception as exc:  # noqa: BLE001 - Ray's snapshot: unreadable, other Ray version, missing checkpoint
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise PipelineError(f"{run.uri}: cannot resume this run ({first}); "
                            "set train.checkpoint.resume=false to start a fresh one") from None


def drop_untracked(run: RunLocation, result: Any) -> None:
    """Delete older checkpoint folders that Ray does not track (left by a crash before registration)."""
    kept = {c.path.rstrip("/") for c, _ in (result.best_checkpoints or [])}
    newest = epoch_of(result.checkpoint.path) if result.checkpoint is not None else None
    for path in checkpoint_folders(run):
        if path.rstrip("/") not in kept and newest is not None and epoch_of(path) < newest:
            with contextlib.suppress(Exception):  # best effort: a leftover folder is harmless
                run.fs.delete_dir(path)
