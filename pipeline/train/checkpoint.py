"""The checkpoint format, the same for every family: safetensors and JSON only, nothing ever unpickled.

A checkpoint folder ``epoch_NNNN/`` holds

* ``models.safetensors``: every model part as ``<part>.<tensor>`` (the GAN's ``G``, ``D`` and
  ``G_ema``; the language model's ``LM``; a plugin's own);
* ``optimizers.safetensors`` + ``state.json``: each optimizer's tensors and param groups, the
  epoch, global step, metrics history, spec, and the size and sha256 of both files;
* ``rng-rank<r>.safetensors``: the torch, CUDA, numpy and python RNG state of every rank;
* ``samples.<ext>``: what the model made this epoch.

:func:`load_checkpoint` verifies sizes and checksums before parsing anything.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import PipelineError
from pipeline.storage import sha256

CHECKPOINT_FORMAT = "aigc-checkpoint/1"
MODELS_FILE = "models.safetensors"
OPTIM_FILE = "optimizers.safetensors"
STATE_FILE = "state.json"


def unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.safetensors"


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


def save_parts(directory: str, parts: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
               state: dict, scaler: Any = None) -> dict:
    """:func:`save_checkpoint` for any named models and optimizers (the text model has one part, "LM")."""
    from safetensors.torch import save

    models = {f"{name}.{k}": v.detach().cpu().contiguous()
              for name, m in parts.items() for k, v in unwrap(m).state_dict().items()}
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
        raise PipelineError(f"{where}/{name}: not a readable safetensors file, truncated or corrupt "
                            f"({first})") from None
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
        raise PipelineError(f"{where}/{STATE_FILE}: not an {CHECKPOINT_FORMAT} state file "
                            "(truncated or corrupt)") from None
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


def load_part(ck: LoadedCheckpoint, name: str, m: nn.Module) -> None:
    try:
        unwrap(m).load_state_dict(ck.part(name), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise PipelineError(f"{ck.where}/{MODELS_FILE}: {name} weights do not fit train.model ({first})") from None
