"""Distributed GAN training with Ray Train: checkpoints that resume for real, and a model package at the end.

:func:`train` runs the train stage of a job::

    from pipeline.specs import load_job
    from pipeline.train import train
    result = train(load_job("jobs/demo.yaml"), on_progress=print)
    result.package_uri   # outputs/models/demo/<version>

or from the shell: ``aigc train jobs/demo.yaml [--set train.epochs=30]``.

How it works

* Data: :func:`pipeline.data.load_data` decodes and resizes the images once in Ray Data and
  materializes them. Every worker reads the whole (uint8) set from its dataset shard, and each
  epoch takes its slice of a permutation seeded by (seed, epoch), as torch's DistributedSampler
  does. Ray Data's ``streaming_split`` hands out blocks dynamically, so its order would differ
  between a run and its resume; this order depends only on the spec. Memory per worker is the
  decoded set: N x C x S x S bytes (1.8 MB for digits at 32x32, 600 MB for 50k RGB 64x64).
* Models: G and D are wrapped in DDP separately (two ``prepare_model`` calls), each with its own
  Adam optimizer. D's gradients from the G update are never all-reduced (``no_sync``).
* Randomness: init from ``train.seed``; the noise (and ``train.augment``'s draws) of (epoch,
  rank) from its own generator. So a run that resumes at epoch k trains exactly what an
  uninterrupted run trains from epoch k.
* R1 (``train.r1``): D's loss adds γ/2·|∇ₓD(x)|² on the real images it saw, every
  ``train.r1_every``-th global step (weighted by that interval); the input gradient is a second
  backward through D, and D's parameter gradients are still all-reduced once per step.
* Averaged G (``train.ema``): every rank keeps a moving average of G's weights, updated after
  each step; its BN statistics are recomputed from seeded samples at every checkpoint. It is
  what the sample grids show and what the model package exports.
* Checkpoints: one per epoch in ``<storage.root>/checkpoints/<job name>/epoch_NNNN/``, the last
  ``checkpoint.keep`` kept by Ray. Safetensors and JSON only, nothing is ever unpickled:
  ``models.safetensors`` (G, D, and G_ema with ``train.ema``), ``optimizers.safetensors`` +
  ``state.json`` (param groups, epoch, global step, metrics history, spec, file checksums),
  ``rng-rank<r>.safetensors`` (torch, numpy, python RNG of each rank) and ``samples.png`` (a
  grid from fixed noise; every epoch's grid is also kept in ``samples/``).
* Resume: Ray Train V2 keeps ``checkpoint_manager_snapshot.json`` in the run folder; a new
  ``RunConfig`` with the same ``name`` and ``storage_path`` loads it, and
  ``ray.train.get_checkpoint()`` returns the latest registered checkpoint. Ray registers a
  report only when its controller next polls (every 2 s, one report at a time), so after a crash
  the folder may hold newer complete checkpoints: rank 0 takes the newest complete one
  (:func:`resume_point`) and broadcasts it. Every rank restores weights, optimizers, RNG and the
  epoch counter, and continues at the next epoch: after a rerun of the job (driver or cluster
  died) and after a worker died (``FailureConfig(max_failures)``). The driver picks and checks
  the same checkpoint first, so a corrupt or incompatible one is a one-line error, not N
  retries. ``checkpoint.resume: false`` starts a fresh run folder ``<name>-<UTC time>``.
* Export: the generator of the last checkpoint becomes ``<root>/models/<job>/<version>/`` (see
  :mod:`pipeline.package`); ``version`` defaults to the first 12 hex digits of the train spec's
  fingerprint, and :func:`existing_package` finds a package already trained from the same spec.
* Text models (``train.model.arch: bytegpt``) use all of this with their own loop and export:
  :mod:`pipeline.train_text`.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import io
import json
import os
import random
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import pipeline.runtime  # noqa: F401 - sets Ray's loopback env before anything imports Ray
from pipeline.data import TrainData, load_data, pyarrow_fs, read_all, to_float, to_uint8
from pipeline.errors import PipelineError, user_error_line
from pipeline.models import build_discriminator, build_generator
from pipeline.models.diffaugment import diff_augment
from pipeline.models.ema import ema_update, recalibrate_bn
from pipeline.models.text_encoder import Features, caption, caption_classes, featurize, with_classes
from pipeline.package import MODEL_JSON, export_package, train_package_uri, train_version
from pipeline.specs import JobSpec, TrainSpec, is_text_model, uri_scheme
from pipeline.storage import (Store, StorageError, WorkerEnv, absolute_uri, is_published, open_fs, package_versions,
                              sha256, worker_env)

CHECKPOINT_FORMAT = "aigc-checkpoint/1"
MODELS_FILE = "models.safetensors"
OPTIM_FILE = "optimizers.safetensors"
STATE_FILE = "state.json"
EMA_PART = "G_ema"  # models.safetensors: the moving average of G's weights (train.ema)
CHECKPOINTS_DIR = "checkpoints"
PROGRESS_EVERY_S = 2.0
GRID = 8  # the sample grid is GRID x GRID images


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


def checkpoint_dir_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


# --------------------------------------------------------------------------------------------- typed config
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
        m = self.metrics
        if self.kind == "wait":
            return "another run of this job is training; waiting for it to finish"
        if self.kind == "start":
            where = (f"resuming after epoch {self.resumed_from + 1}" if self.resumed_from is not None else "starting")
            return f"{where}: epoch {self.epoch + 1}/{self.epochs} on {self.world_size} worker(s), {self.nodes} node(s)"
        losses = f"loss_D {m.get('loss_D', float('nan')):.3f}  loss_G {m.get('loss_G', float('nan')):.3f}"
        if self.kind == "step":
            return (f"epoch {self.epoch + 1}/{self.epochs}  step {self.step}/{self.steps}  {losses}  "
                    f"{m.get('images/s', 0):,.0f} images/s")
        return (f"epoch {self.epoch + 1}/{self.epochs} done  {losses}  D(x) {m.get('D(x)', 0):.3f}  "
                f"D(G(z)) {m.get('D(G(z))', 0):.3f}  {m.get('images/s', 0):,.0f} images/s  (step {self.global_step})")


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


@dataclass
class LoopConfig:
    """Everything one training worker needs; travels to the workers inside ``train_loop_config``."""

    job: JobSpec
    run: RunLocation
    data_fingerprint: str
    progress: Any = None  # ray.util.queue.Queue for live progress, or None
    classes: list[str] = field(default_factory=list)  # class names by label id (captions for a text encoder)
    env: WorkerEnv = field(default_factory=WorkerEnv)  # storage credentials: in the task, never in a Ray log


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


# --------------------------------------------------------------------------------------------- helpers
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


def run_location(job: JobSpec, fresh_suffix: str | None = None) -> RunLocation:
    """The Ray Train run folder of a job: ``<root>/checkpoints/<name>`` (``<name>-<suffix>`` for fresh runs)."""
    root = job.storage.root.rstrip("/")
    if uri_scheme(root) == "memory":
        raise PipelineError(f"storage.root: {root}: memory:// lives in one process; Ray Train workers cannot share it "
                            "(use a local path, s3:// or gs://)")
    if uri_scheme(root) == "file":
        root = os.path.abspath(root[len("file://"):] if root.startswith("file://") else root)  # workers chdir
    fs, path = open_fs(f"{root}/{CHECKPOINTS_DIR}", job.storage)
    name = job.name if fresh_suffix is None else f"{job.name}-{fresh_suffix}"
    return RunLocation(name=name, uri=f"{root}/{CHECKPOINTS_DIR}/{name}", storage_path=path, fs=pyarrow_fs(fs))


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike hash())."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big") >> 1


def steps_per_epoch(n: int, world: int, batch_size: int) -> int:
    return (-(-n // world)) // batch_size


def epoch_indices(n: int, epoch: int, rank: int, world: int, seed: int) -> torch.Tensor:
    """This rank's example indices for an epoch: its slice of a permutation seeded by (seed, epoch).

    Padded like torch's DistributedSampler so that every rank takes the same number of steps
    (DDP hangs when one rank runs a step the others do not).
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, epoch)))
    total = -(-n // world) * world
    if total > n:
        perm = torch.cat([perm, perm[: total - n]])
    return perm[rank::world]


def _epoch_of(path: str) -> int | None:
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
    found = [i.path for i in infos if i.type == pafs.FileType.Directory and _epoch_of(i.path) is not None]
    return sorted(found, key=lambda p: _epoch_of(p), reverse=True)


def resume_point(run: RunLocation, registered: Any) -> Any:
    """The checkpoint to continue from: Ray's latest registered one, or a newer complete one.

    Ray Train V2 registers a reported checkpoint when its controller next polls the workers
    (every 2 s, one report at a time), so after a crash the run folder can hold complete
    checkpoints newer than the one ``ray.train.get_checkpoint()`` returns. Resuming from the
    newest complete one loses no finished epoch. Returns a ``ray.train.Checkpoint`` or None.
    """
    from ray.train import Checkpoint

    floor = _epoch_of(registered.path) if registered is not None else None
    for path in checkpoint_folders(run):
        if floor is not None and _epoch_of(path) <= floor:
            break
        if _complete(run, path):
            return Checkpoint(path, filesystem=run.fs)
    return registered


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def _no_sync(m: nn.Module):
    # Distributed only: skip the all-reduce of D's gradients from the G update (they are discarded).
    return m.no_sync() if isinstance(m, nn.parallel.DistributedDataParallel) else contextlib.nullcontext()


def make_optimizers(G: nn.Module, D: nn.Module, t: TrainSpec) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for G and D; a text encoder inside G gets its own learning rate (its own param group)."""
    text = getattr(_unwrap(G), "text", None)
    if text is None:
        groups: Any = G.parameters()
    else:
        ids = {id(p) for p in text.parameters()}
        groups = [{"params": [p for p in G.parameters() if id(p) not in ids]},
                  {"params": list(text.parameters()), "lr": t.model.text_encoder.lr}]
    return (torch.optim.Adam(groups, lr=t.lr_g, betas=(t.beta1, t.beta2)),
            torch.optim.Adam(D.parameters(), lr=t.lr_d, betas=(t.beta1, t.beta2)))


def build_models(t: TrainSpec) -> tuple[nn.Module, nn.Module]:
    """G and D with the same initial weights on every rank, for a given ``train.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        return build_generator(t.model), build_discriminator(t.model)


def build_ema(t: TrainSpec, G: nn.Module, ck: LoadedCheckpoint | None = None,
              device: torch.device | None = None) -> nn.Module | None:
    """The moving average of G's weights (``train.ema``): the checkpoint's, else a copy of G; None when off.

    Call it after G is restored and before G is wrapped in DDP. Every rank keeps one (all
    update it alike); rank 0 checkpoints it.
    """
    if not t.ema:
        return None
    avg = copy.deepcopy(_unwrap(G))
    if ck is not None and ck.part(EMA_PART):
        _load_part(ck, EMA_PART, avg)
    return avg.to(device).eval() if device is not None else avg.eval()  # only ema_update moves its parameters


def ema_bn(G_ema: nn.Module, t: TrainSpec) -> nn.Module:
    """Recompute the averaged G's batch-norm statistics (seeded: a function of its weights alone)."""
    return recalibrate_bn(G_ema, torch.Generator().manual_seed(_mix(t.seed, "ema-bn")))


def r1_weight(t: TrainSpec, global_step: int) -> float:
    """The R1 weight of the step after ``global_step`` steps: lazy, ``r1 * r1_every`` every ``r1_every`` steps."""
    return t.r1 * t.r1_every if t.r1 and global_step % t.r1_every == 0 else 0.0


def augmenter(t: TrainSpec, epoch: int, rank: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``train.augment`` as one function for this epoch and rank; its draws come from its own generator."""
    if not t.augment:
        return None
    gen = torch.Generator().manual_seed(_mix(t.seed, "augment", epoch, rank))
    return lambda x: diff_augment(x, t.augment, gen)


def gan_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
             real: torch.Tensor, labels: torch.Tensor | None, z: torch.Tensor,
             autocast: Any = None, scaler: Any = None, text: Features | None = None,
             augment: Callable[[torch.Tensor], torch.Tensor] | None = None, r1: float = 0.0) -> torch.Tensor:
    """One DCGAN step (non-saturating loss). Returns [loss_D, loss_G, D(x), D(G(z)), loss_text] as a tensor.

    With ``text`` (featurized captions of ``labels``), G's text encoder also learns to classify the
    captions: its cross-entropy joins G's loss (the encoder's own parameters get only that gradient).
    With ``augment`` (DiffAugment), D sees every real and generated batch through it, G's
    gradients flowing back through it. With ``r1`` > 0, D's loss also gets the R1 penalty
    ``r1 / 2 * |grad_x D(x)|^2`` on the real images it saw (reported loss_D leaves it out).
    """
    autocast = autocast or contextlib.nullcontext
    aug = augment or (lambda x: x)
    ones = torch.ones(real.shape[0], device=real.device)
    zeros = torch.zeros_like(ones)

    # 1. update D: real images → 1, generated → 0 (two forwards, one backward: one all-reduce)
    opt_d.zero_grad(set_to_none=True)
    with autocast():
        if text is not None:
            fake, loss_text = G(z, labels, text=text, text_targets=labels)
        else:
            fake, loss_text = G(z, labels), torch.zeros((), device=real.device)
        seen = aug(real)
        if r1:
            seen = seen.detach().requires_grad_(True)
        logit_real = D(seen, labels)
        logit_fake = D(aug(fake.detach()), labels)
        loss_d = (F.binary_cross_entropy_with_logits(logit_real.float(), ones)
                  + F.binary_cross_entropy_with_logits(logit_fake.float(), zeros))
    penalty = torch.zeros((), device=real.device)
    if r1:  # a gradient w.r.t. the input only: D's parameter gradients still sync once, below
        # fp16: differentiate the scaled sum and unscale, so small input gradients do not flush to
        # zero (torch.amp's gradient-penalty recipe); a disabled or absent scaler scales by 1
        out = logit_real.float().sum()
        grad, = torch.autograd.grad(scaler.scale(out) if scaler is not None else out, seen, create_graph=True)
        if scaler is not None:
            grad = grad / scaler.get_scale()
        penalty = r1 / 2 * grad.float().pow(2).flatten(1).sum(1).mean()
    if scaler is not None:
        scaler.scale(loss_d + penalty).backward()
        scaler.step(opt_d)
    else:
        (loss_d + penalty).backward()
        opt_d.step()

    # 2. update G: make D call G(z) real
    opt_g.zero_grad(set_to_none=True)
    with _no_sync(D), autocast():
        loss_g = F.binary_cross_entropy_with_logits(D(aug(fake), labels).float(), ones)
        if text is not None:
            loss_g = loss_g + loss_text.float()
    if scaler is not None:
        scaler.scale(loss_g).backward()
        scaler.step(opt_g)
        scaler.update()
    else:
        loss_g.backward()
        opt_g.step()
    return torch.stack([loss_d.detach(), loss_g.detach(),
                        torch.sigmoid(logit_real.detach().float()).mean(),
                        torch.sigmoid(logit_fake.detach().float()).mean(), loss_text.detach().float()])


def fixed_noise(t: TrainSpec, n: int = GRID * GRID) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The noise (and labels 0,1,2,... per column) of every epoch's sample grid."""
    z = torch.randn(n, t.model.z_dim, generator=torch.Generator().manual_seed(_mix(t.seed, "grid")))
    labels = torch.arange(n) % t.model.num_classes if t.model.conditional else None
    return z, labels


def grid_png(images: torch.Tensor, nrow: int = GRID, pad: int = 2) -> bytes:
    """(N, C, S, S) floats in [-1, 1] → one PNG grid."""
    from PIL import Image

    x = to_uint8(images.cpu())
    n, c, s, _ = x.shape
    rows = -(-n // nrow)
    canvas = torch.zeros(c, rows * (s + pad) + pad, nrow * (s + pad) + pad, dtype=torch.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[:, pad + r * (s + pad): pad + r * (s + pad) + s, pad + col * (s + pad): pad + col * (s + pad) + s] = x[i]
    arr = canvas[0].numpy() if c == 1 else canvas.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L" if c == 1 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


@torch.no_grad()
def sample_grid(G: nn.Module, t: TrainSpec, device: torch.device) -> bytes:
    g = _unwrap(G)
    was_training = g.training
    g.eval()  # the grid shows what the exported (eval-mode) generator makes
    z, labels = fixed_noise(t)
    out = g(z.to(device), labels.to(device) if labels is not None else None)
    g.train(was_training)
    return grid_png(out)


# --------------------------------------------------------------------------------------------- checkpoints
def _write(path: str, data: bytes) -> dict:
    with open(path, "wb") as f:
        f.write(data)
    return {"size": len(data), "sha256": sha256(data)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's torch, CUDA, numpy and python RNG states as tensors + string metadata."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state(),
               "numpy": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
               "python": torch.tensor(py_internal, dtype=torch.int64)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state()
    meta = {"numpy": json.dumps([np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])]),
            "python": json.dumps([py_version, py_gauss])}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    algo, pos, has_gauss, cached = json.loads(meta["numpy"])
    np.random.set_state((algo, tensors["numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    py_version, py_gauss = json.loads(meta["python"])
    random.setstate((py_version, tuple(int(v) for v in tensors["python"].tolist()), py_gauss))


def save_checkpoint(directory: str, G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
                    opt_d: torch.optim.Optimizer, state: dict, scaler: Any = None, G_ema: nn.Module | None = None) -> dict:
    """Write models, optimizers and state.json (with each file's size and sha256) into ``directory``.

    ``G_ema`` (the moving average of G, ``train.ema``) goes into models.safetensors as ``G_ema.*``.
    """
    parts = {"G": G, "D": D, **({EMA_PART: G_ema} if G_ema is not None else {})}
    return save_parts(directory, parts, {"G": opt_g, "D": opt_d}, state, scaler)


def save_parts(directory: str, parts: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
               state: dict, scaler: Any = None) -> dict:
    """:func:`save_checkpoint` for any named models and optimizers (the text model has one part, "LM")."""
    from safetensors.torch import save

    models = {f"{name}.{k}": v.detach().cpu().contiguous()
              for name, m in parts.items() for k, v in _unwrap(m).state_dict().items()}
    optim: dict[str, torch.Tensor] = {}
    groups: dict[str, Any] = {}
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        for idx, st in sd["state"].items():
            for k, v in st.items():
                optim[f"{name}.{idx}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
        groups[name] = _jsonable(sd["param_groups"])
    files = {MODELS_FILE: _write(os.path.join(directory, MODELS_FILE), save(models, {"format": CHECKPOINT_FORMAT})),
             OPTIM_FILE: _write(os.path.join(directory, OPTIM_FILE), save(optim, {"format": CHECKPOINT_FORMAT}))}
    full = {"format": CHECKPOINT_FORMAT, **state, "param_groups": groups, "files": files,
            "grad_scaler": _jsonable(scaler.state_dict()) if scaler is not None and scaler.is_enabled() else None}
    with open(os.path.join(directory, STATE_FILE), "w") as f:
        json.dump(full, f, indent=1, sort_keys=True)
    return full


def save_rng(directory: str, rank: int) -> None:
    from safetensors.torch import save

    tensors, meta = rng_state()
    _write(os.path.join(directory, rng_file(rank)), save({k: v.contiguous() for k, v in tensors.items()}, meta))


@dataclass
class LoadedCheckpoint:
    """A checkpoint read and verified: nothing in it was unpickled."""

    where: str
    state: dict
    models: dict[str, torch.Tensor]
    optim: dict[str, torch.Tensor]

    @property
    def epoch(self) -> int:
        return int(self.state["epoch"])

    def part(self, name: str) -> dict[str, torch.Tensor]:
        return {k[len(name) + 1:]: v for k, v in self.models.items() if k.startswith(name + ".")}

    def optimizer_state(self, name: str) -> dict:
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        for key, v in self.optim.items():
            owner, idx, k = key.split(".", 2)
            if owner == name:
                per_param.setdefault(int(idx), {})[k] = v
        return {"state": per_param, "param_groups": self.state["param_groups"][name]}


def _read_bytes(directory: str, name: str, where: str) -> bytes:
    path = os.path.join(directory, name)
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise PipelineError(f"{where}/{name}: missing from the checkpoint") from None
    except OSError as exc:
        raise PipelineError(f"{where}/{name}: cannot read ({exc.strerror or exc})") from None


def _safetensors(data: bytes, name: str, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file (its header is JSON; nothing is unpickled)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
        header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise PipelineError(f"{where}/{name}: not a readable safetensors file, truncated or corrupt ({first})") from None
    return tensors, dict(header.get("__metadata__") or {})


def load_checkpoint(directory: str, where: str | None = None, parts: tuple[str, ...] = ("G", "D")) -> LoadedCheckpoint:
    """Read and verify a checkpoint folder (sizes and sha256 from state.json, then safetensors).

    Any problem is a PipelineError naming the file. Only JSON and safetensors are parsed.
    ``parts``: the optimizers state.json must hold (the GAN's G and D; the text model's LM).
    """
    where = (where or directory).rstrip("/")
    raw = _read_bytes(directory, STATE_FILE, where)
    try:
        state = json.loads(raw)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("format")
        files = state["files"]
        int(state["epoch"]), int(state["global_step"]), [state["param_groups"][part] for part in parts]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise PipelineError(f"{where}/{STATE_FILE}: not an {CHECKPOINT_FORMAT} state file (truncated or corrupt)") from None
    blobs = {}
    for name in (MODELS_FILE, OPTIM_FILE):
        data = _read_bytes(directory, name, where)
        rec = files.get(name) or {}
        if len(data) != rec.get("size") or sha256(data) != rec.get("sha256"):
            raise PipelineError(f"{where}/{name}: {len(data):,} bytes whose sha256 does not match state.json "
                                f"(expected {rec.get('size', '?'):,} bytes): truncated or corrupt checkpoint")
        blobs[name] = _safetensors(data, name, where)[0]
    return LoadedCheckpoint(where=where, state=state, models=blobs[MODELS_FILE], optim=blobs[OPTIM_FILE])


def load_rng(directory: str, rank: int, where: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    if not os.path.exists(os.path.join(directory, rng_file(rank))):
        return None  # e.g. more workers than when it was saved
    return _safetensors(_read_bytes(directory, rng_file(rank), where), rng_file(rank), where)


def _load_part(ck: LoadedCheckpoint, name: str, m: nn.Module) -> None:
    try:
        _unwrap(m).load_state_dict(ck.part(name), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise PipelineError(f"{ck.where}/{MODELS_FILE}: {name} weights do not fit train.model ({first})") from None


def restore(ck: LoadedCheckpoint, G: nn.Module, D: nn.Module) -> None:
    for name, m in (("G", G), ("D", D)):
        _load_part(ck, name, m)


def exported_generator(ck: LoadedCheckpoint, t: TrainSpec) -> nn.Module:
    """The generator a checkpoint exports: its moving average of G when it has one, else G."""
    G = build_generator(t.model)
    _load_part(ck, EMA_PART if ck.part(EMA_PART) else "G", G)
    return G


def restore_optimizers(ck: LoadedCheckpoint, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer,
                       t: TrainSpec) -> None:
    for name, opt, lr in (("G", opt_g, t.lr_g), ("D", opt_d, t.lr_d)):
        try:
            opt.load_state_dict(ck.optimizer_state(name))
        except (ValueError, KeyError, RuntimeError) as exc:
            raise PipelineError(f"{ck.where}/{OPTIM_FILE}: {name} optimizer state does not fit ({exc})") from None
        for group in opt.param_groups:  # the spec is the source of truth for hyper-parameters
            group["lr"], group["betas"] = lr, (t.beta1, t.beta2)


# --------------------------------------------------------------------------------------------- worker loop
def _write_run_file(cfg: LoopConfig, rel: str, data: bytes) -> None:
    path = f"{cfg.run.path}/{rel}"
    cfg.run.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with cfg.run.fs.open_output_stream(path) as f:
        f.write(data)


def _quiet_worker_logs() -> None:
    """Keep Ray's per-epoch INFO lines ("Reporting training result ...") off the user's terminal."""
    import logging

    names = ["ray.train", "ray.data"]
    with contextlib.suppress(ImportError):  # this one logs under its file path, not under "ray.train"
        from ray.train.v2._internal.execution import context

        names.append(context.__file__)
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict) -> None:
    """The loop every Ray Train worker runs (rank 0 also checkpoints, samples and reports progress)."""
    import ray
    import ray.train
    import ray.train.torch

    cfg: LoopConfig = config["cfg"]
    cfg.env.apply()
    t = cfg.job.train
    assert t is not None
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    def progress(event: Progress) -> None:
        if rank == 0 and cfg.progress is not None:
            with contextlib.suppress(Exception):  # progress is best effort, never a reason to fail
                cfg.progress.put_nowait(event)

    # 1. data: the whole decoded set, in key order, on every worker (slices are cut per epoch)
    _quiet_worker_logs()
    images, labels = read_all(ray.train.get_dataset_shard("train"))
    _quiet_worker_logs()  # Ray Data's logging setup on first use resets what Ray Train configured
    n = len(images)
    steps = steps_per_epoch(n, world, t.batch_size)
    conditional = t.model.conditional

    # 2. models from the seed, or from the latest checkpoint (after a resume or a worker restart)
    G, D = build_models(t)
    te = t.model.text_encoder if conditional else None
    classes = caption_classes(t.model, cfg.classes)
    start_epoch, global_step, history, resumed_from = 0, 0, [], None
    ck, rng = checkpoint_on_worker(cfg, rank, world)
    if ck is not None:
        restore(ck, G, D)
        resumed_from = ck.epoch
        start_epoch, global_step, history = ck.epoch + 1, int(ck.state["global_step"]), list(ck.state["history"])
    G_ema = build_ema(t, G, ck, device)
    # Distributed: two separate DDP wrappers (one module holding both breaks GAN training).
    G = ray.train.torch.prepare_model(G)
    D = ray.train.torch.prepare_model(D)
    opt_g, opt_d = make_optimizers(G, D, t)

    use_amp = device.type == "cuda" and t.mixed_precision
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16) if use_amp else None

    if ck is not None:
        restore_optimizers(ck, opt_g, opt_d, t)
        if scaler is not None and ck.state.get("grad_scaler"):
            scaler.load_state_dict(ck.state["grad_scaler"])
        if rng is not None:
            set_rng_state(*rng)
    else:
        random.seed(_mix(t.seed, "python", rank))
        np.random.seed(_mix(t.seed, "numpy", rank) % 2**32)
        torch.manual_seed(_mix(t.seed, "torch", rank))

    nodes = [ray.get_runtime_context().get_node_id()] * world
    if world > 1:  # Distributed: which Ray node each rank runs on, for the start line
        torch.distributed.all_gather_object(nodes, nodes[0])
    progress(Progress("start", start_epoch, t.epochs, steps=steps, global_step=global_step, resumed_from=resumed_from,
                      world_size=world, nodes=len(set(nodes))))
    for epoch in range(start_epoch, t.epochs):
        idx = epoch_indices(n, epoch, rank, world, t.seed)
        noise = torch.Generator().manual_seed(_mix(t.seed, epoch, rank))
        captions = random.Random(_mix(t.seed, "captions", epoch, rank))  # which caption each label gets
        augment = augmenter(t, epoch, rank)
        sums = torch.zeros(5, device=device)
        t0 = last = time.perf_counter()
        for step in range(steps):
            b = idx[step * t.batch_size:(step + 1) * t.batch_size]
            real = to_float(images[b]).to(device, non_blocking=True)
            lab = labels[b].to(device) if conditional else None
            z = torch.randn(len(b), t.model.z_dim, generator=noise).to(device)
            text = None
            if te is not None:
                text = featurize([caption(classes[i], captions) for i in lab.tolist()], te).to(device)
            out = gan_step(G, D, opt_g, opt_d, real, lab, z, autocast, scaler, text, augment, r1_weight(t, global_step))
            sums += out
            global_step += 1
            if G_ema is not None:
                ema_update(G_ema, _unwrap(G), t.ema, global_step)
            now = time.perf_counter()
            if rank == 0 and now - last > PROGRESS_EVERY_S:
                last = now
                progress(Progress("step", epoch, t.epochs, step + 1, steps, global_step,
                                  {"loss_D": out[0].item(), "loss_G": out[1].item(),
                                   "images/s": (step + 1) * t.batch_size * world / (now - t0)}))
        seconds = time.perf_counter() - t0
        # Distributed: average the epoch's metrics over all ranks (the loop's only explicit collective).
        if world > 1:
            torch.distributed.all_reduce(sums)
        means = (sums / (steps * world)).tolist()
        metrics = {"epoch": epoch, "global_step": global_step, "loss_D": means[0], "loss_G": means[1],
                   "D(x)": means[2], "D(G(z))": means[3], **({"loss_text": means[4]} if te is not None else {}),
                   "images/s": steps * t.batch_size * world / seconds,
                   "seconds": seconds}
        history.append(metrics)

        # 3. checkpoint: rank 0 writes models, optimizers, state and samples; every rank its RNG
        def write(tmp: str, state: dict) -> None:
            if G_ema is not None:
                ema_bn(G_ema, t)  # its BN statistics, for the checkpoint, the grid and the export
            save_checkpoint(tmp, G, D, opt_g, opt_d, state, scaler, G_ema)
            write_samples(cfg, tmp, epoch, sample_grid(G_ema if G_ema is not None else G, t, device), "png")

        report_epoch(cfg, epoch, rank, metrics, history, write, world_size=world, steps_per_epoch=steps, num_examples=n)
        progress(Progress("epoch", epoch, t.epochs, steps, steps, global_step, metrics))


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
    _write_run_file(cfg, f"samples/{checkpoint_dir_name(epoch)}.{ext}", data)


def report_epoch(cfg: LoopConfig, epoch: int, rank: int, metrics: dict[str, Any], history: list[dict],
                 write: Callable[[str, dict], None], **state: Any) -> None:
    """End an epoch on one worker: rank 0 calls ``write(directory, state)`` to put the models,
    optimizers, ``state`` and samples into the checkpoint; every rank adds its RNG; all report."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="aigc-ckpt-") as tmp:
        if rank == 0:
            full = {"epoch": epoch, "global_step": metrics["global_step"], "history": history, **state,
                    "data_fingerprint": cfg.data_fingerprint, "train_fingerprint": cfg.job.fingerprint("train"),
                    "spec": cfg.job.masked(), "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
            write(tmp, full)
        save_rng(tmp, rank)
        # Distributed: every rank reports (a barrier); Ray merges their files into one checkpoint folder.
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=checkpoint_dir_name(epoch))


# --------------------------------------------------------------------------------------------- loopback rendezvous
def _host_loopback_store() -> tuple[str, int]:
    """On rank 0: host torch's rendezvous store on 127.0.0.1 only (torch binds every interface)."""
    import datetime
    import socket

    from torch.distributed import TCPStore

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    store = TCPStore("127.0.0.1", port, is_master=True, master_listen_fd=sock.fileno(), wait_for_workers=False,
                     timeout=datetime.timedelta(seconds=1800))
    globals()["_LOOPBACK_STORE"] = (sock, store)  # lives as long as this worker process
    return "127.0.0.1", port


def _set_env(env: dict[str, str]) -> None:
    os.environ.update(env)


def torch_config() -> Any:
    """Ray's TorchConfig; on an all-loopback cluster, one whose rendezvous listens on 127.0.0.1 only.

    Ray Train's TorchConfig makes rank 0 host torch's TCPStore, which binds every interface.
    Here rank 0 hosts it on a socket bound to 127.0.0.1 (``master_listen_fd``), every rank joins
    as a client (``TORCHELASTIC_USE_AGENT_STORE``), and gloo uses the loopback device. This uses
    Ray's private ``_TorchBackend``; if that moves, we fall back to the stock config.
    """
    import ray
    from ray.train.torch import TorchConfig

    try:
        from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend
    except ImportError:  # Ray moved its internals: keep the stock (all-interfaces) rendezvous
        return TorchConfig()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if not nodes or any(n.get("NodeManagerAddress") != "127.0.0.1" for n in nodes):
        return TorchConfig()

    class _LoopbackBackend(_TorchBackend):
        def on_start(self, worker_group: Any, backend_config: Any) -> None:
            resources = worker_group.get_resources_per_worker()
            if resources.get("GPU", 0) or resources.get("TPU", 0) or backend_config.backend not in (None, "gloo"):
                return super().on_start(worker_group, backend_config)
            addr, port = worker_group.execute_single(0, _host_loopback_store)
            worker_group.execute(_set_env, env={"MASTER_ADDR": addr, "MASTER_PORT": str(port),
                                                "TORCHELASTIC_USE_AGENT_STORE": "True", "GLOO_SOCKET_IFNAME": "lo"})
            worker_group.execute(_set_torch_distributed_env_vars)
            ray.get([worker_group.execute_single_async(i, _setup_torch_process_group, backend="gloo", world_rank=i,
                                                       world_size=len(worker_group), init_method="env://",
                                                       timeout_s=backend_config.timeout_s)
                     for i in range(len(worker_group))])

    class LoopbackTorchConfig(TorchConfig):
        @property
        def backend_cls(self):
            return _LoopbackBackend

    return LoopbackTorchConfig()


# --------------------------------------------------------------------------------------------- driver
def _latest_checkpoint(run: RunLocation) -> Any:
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


def _check_resumable(ck: LoadedCheckpoint, job: JobSpec, data: TrainData) -> None:
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
    need = {"CPU": s.num_workers * s.cpus_per_worker, **{k: v * s.num_workers for k, v in s.resources_per_worker.items()}}
    if s.use_gpu:
        need["GPU"] = need.get("GPU", 0) + s.num_workers
    for k, v in need.items():
        if have.get(k, 0) < v:
            raise PipelineError(f"train.scaling: {s.num_workers} worker(s) need {v:g} {k} in all, but this Ray has "
                                f"{have.get(k, 0):g}; lower train.scaling.num_workers or cpus_per_worker")


def _drop_untracked(run: RunLocation, result: Any) -> None:
    """Delete older checkpoint folders that Ray does not track (left by a crash before registration)."""
    kept = {c.path.rstrip("/") for c, _ in (result.best_checkpoints or [])}
    newest = _epoch_of(result.checkpoint.path) if result.checkpoint is not None else None
    for path in checkpoint_folders(run):
        if path.rstrip("/") not in kept and newest is not None and _epoch_of(path) < newest:
            with contextlib.suppress(Exception):  # best effort: a leftover folder is harmless
                run.fs.delete_dir(path)


def _run_fit(job: JobSpec, run: RunLocation, data: TrainData, on_progress: Callable[[Progress], None] | None,
             loop: Callable[[dict], None] | None = None) -> Any:
    """One TorchTrainer fit of ``loop`` (default: the GAN loop; the text model passes its own)."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.config import LoggingConfig
    from ray.util.queue import Empty, Queue

    t = job.train
    assert t is not None
    queue = Queue(actor_options={"num_cpus": 0}) if on_progress is not None else None
    cfg = LoopConfig(job=job, run=run, data_fingerprint=data.fingerprint, progress=queue, classes=data.classes,
                     env=worker_env(job))
    try:  # Ray checks scaling and run settings here; a refusal is the user's to fix, in one line
        trainer = TorchTrainer(
            loop or train_loop_per_worker,
            train_loop_config={"cfg": cfg},
            torch_config=torch_config(),
            scaling_config=ScalingConfig(num_workers=t.scaling.num_workers, use_gpu=t.scaling.use_gpu,
                                         resources_per_worker={"CPU": t.scaling.cpus_per_worker,
                                                               **t.scaling.resources_per_worker}),
            run_config=RunConfig(name=run.name, storage_path=run.storage_path, storage_filesystem=run.fs,
                                 failure_config=FailureConfig(max_failures=t.checkpoint.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoint.keep),
                                 logging_config=LoggingConfig(log_level="WARNING")),
            datasets={"train": data.dataset},
            # Every worker gets the whole dataset; each takes its deterministic slice per epoch.
            dataset_config=DataConfig(datasets_to_split=[]),
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
        if is_text_model(t.model):  # the byte-level GPT: same run folder, lock and package, its own loop
            from pipeline.train_text import train_text_locked

            return train_text_locked(job, run, on_progress, started)
        return _train_locked(job, run, on_progress, started)


def _skipped(job: JobSpec, uri: str, started: float) -> TrainResult:
    meta = Store(uri, job.storage).read_json(MODEL_JSON)
    return TrainResult(package_uri=uri, model_sha256=meta.get("model_sha256", ""), version=package_version(job),
                       run_uri=meta.get("run", ""), epochs=meta.get("epochs", 0), global_step=meta.get("global_step", 0),
                       history=meta.get("metrics", []), epochs_run=[], resumed_from=None, skipped=True,
                       seconds=time.perf_counter() - started, data=meta.get("data", {}))


def _train_locked(job: JobSpec, run: RunLocation, on_progress: Callable[[Progress], None] | None,
                  started: float) -> TrainResult:
    t = job.train
    assert t is not None
    data = load_data(t.data, t.model, job.storage)
    if t.model.conditional and not data.labelled:
        raise PipelineError(f"train.model.conditional: needs class labels, but {data.uri or data.source} has none "
                            "(put images in class subfolders, or give a Parquet label column)")
    if t.model.conditional and data.num_labels > t.model.num_classes:
        raise PipelineError(f"train.model.num_classes: {t.model.num_classes}, but {data.uri or data.source} has labels "
                            f"up to {data.num_labels - 1}")
    per_worker = -(-data.count // t.scaling.num_workers)
    if per_worker < t.batch_size:
        raise PipelineError(f"train.batch_size: {t.batch_size} per worker, but {data.count} examples over "
                            f"{t.scaling.num_workers} worker(s) give only {per_worker} each; lower it")

    ck, resumed_from = fit_from_last_checkpoint(job, run, data, on_progress)

    # Export the generator of the last checkpoint (its moving average, with train.ema).
    G = exported_generator(ck, t)
    # A text generator's package names its classes, so a bare label captions the same way everywhere.
    return export_result(job, run, data, ck, resumed_from, started, G, with_classes(t.model, data.classes))


def fit_from_last_checkpoint(job: JobSpec, run: RunLocation, data: Any, on_progress: Callable[[Progress], None] | None,
                             loop: Callable[[dict], None] | None = None, parts: tuple[str, ...] = ("G", "D")
                             ) -> tuple[LoadedCheckpoint, int | None]:
    """Resume from the newest complete checkpoint (checked here, once) or start; fit up to
    ``train.epochs``; return the last checkpoint and the epoch this call resumed after (or None)."""
    t = job.train
    assert t is not None

    def load(latest: Any) -> LoadedCheckpoint:
        with latest.as_directory() as d:
            return load_checkpoint(d, f"{run.uri}/{os.path.basename(latest.path.rstrip('/'))}", parts=parts)

    latest = resume_point(run, _latest_checkpoint(run)) if t.checkpoint.resume else None
    resumed_from = None
    if latest is not None:
        ck = load(latest)
        _check_resumable(ck, job, data)
        resumed_from = ck.epoch
    if resumed_from is None or resumed_from + 1 < t.epochs:
        result = _run_fit(job, run, data, on_progress, loop=loop)
        latest = result.checkpoint
        _drop_untracked(run, result)
    if latest is None:
        raise PipelineError(f"{run.uri}: training finished without a checkpoint")
    return load(latest), resumed_from


def export_result(job: JobSpec, run: RunLocation, data: Any, ck: LoadedCheckpoint, resumed_from: int | None,
                  started: float, model: nn.Module, config: Any, **meta: Any) -> TrainResult:
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
                       seconds=time.perf_counter() - started, data=data.summary())
