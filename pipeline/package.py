"""Model packages: the versioned, pickle-free artefact that training exports and generation loads.

Layout at ``<storage.root>/models/<job name>/<version>/`` (:mod:`pipeline.layout`)::

    model.json              the family's model configuration (``model.arch`` names the family),
                            dataset fingerprint, metrics, versions
    generator.safetensors   the network's weights (and BN buffers); no pickle anywhere
    manifest.json, _SUCCESS written last, so a half-exported package is never loaded

``model_sha256`` (the sha256 of ``generator.safetensors``) names the weights in every asset's
provenance. Every family's package has this layout; :meth:`ModelPackage.build_model` asks the
family of ``model.arch`` for the network and loads the weights into it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import ValidationError

from pipeline.catalog.base import ModelConfig
from pipeline.catalog.registry import implementation, parse_config
from pipeline.errors import PackageError, StorageError
from pipeline.layout import package_uri
from pipeline.specs.schema import DataSpec, StorageSpec
from pipeline.storage import Store, is_published, publish, resolve_recorded, sha256

MODEL_JSON = "model.json"
WEIGHTS = "generator.safetensors"
PACKAGE_FORMAT = "aigc-model/1"

__all__ = ["MODEL_JSON", "WEIGHTS", "ModelPackage", "PackageError", "export_package", "load_package", "package_uri",
           "train_package_uri", "train_version"]


@dataclass
class ModelPackage:
    uri: str
    config: ModelConfig
    meta: dict[str, Any]
    model_sha256: str
    state_dict: dict[str, torch.Tensor]

    def build_model(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The package's network, rebuilt from the package alone, in eval mode."""
        net = implementation(self.config).build(self.config)  # load_package checked its shapes already
        try:
            net.load_state_dict(self.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise PackageError(f"{self.uri}/{WEIGHTS}: weights do not fit the architecture in model.json "
                               f"({first})") from None
        return net.to(device).eval()

    def trained_on(self) -> DataSpec | None:
        """The data the package says it was trained on (its model.json's ``train.data``), a relative path
        resolved beside the package; None when it names none."""
        raw = (self.meta.get("train") or {}).get("data")
        if isinstance(raw, dict) and isinstance(raw.get("uri"), str):
            raw = {**raw, "uri": resolve_recorded(raw["uri"], self.uri)}
        try:
            return DataSpec.model_validate(raw) if raw is not None else None
        except ValidationError:
            return None


def export_package(uri: str, generator: torch.nn.Module, config: ModelConfig, meta: dict[str, Any],
                   storage: StorageSpec | None = None, job: str = "") -> str:
    """Write model.json + generator.safetensors, then manifest and _SUCCESS. Returns model_sha256."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    weights = save(state, metadata={"format": PACKAGE_FORMAT})
    model_sha = sha256(weights)
    model_json = {"format": PACKAGE_FORMAT, "model": config.model_dump(mode="json"), "model_sha256": model_sha, **meta}
    store = Store(uri, storage)
    files = {WEIGHTS: weights, MODEL_JSON: json.dumps(model_json, indent=1, sort_keys=True).encode()}
    publish(store, kind="model", job=job, spec=None, counts={"files": len(files)}, files=files,
            extra={"model_sha256": model_sha})
    return model_sha


MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32: larger is not a model this pipeline trains or serves


def _weights_header(weights: bytes, where: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name → (dtype, shape) from a safetensors header, read without loading a tensor."""
    if len(weights) < 8:
        raise PackageError(f"{where}: not a readable safetensors file (only {len(weights)} bytes)")
    n = int.from_bytes(weights[:8], "little")
    if n > min(len(weights) - 8, 100 * 2**20):
        raise PackageError(f"{where}: not a readable safetensors file (header of {n:,} bytes in a file of "
                           f"{len(weights):,})")
    try:
        header = json.loads(weights[8:8 + n])
        return {k: (str(v["dtype"]), tuple(int(d) for d in v["shape"])) for k, v in header.items()
                if k != "__metadata__"}
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError, UnicodeDecodeError):
        raise PackageError(f"{where}: not a readable safetensors file (bad header)") from None


def check_weights_fit(config: ModelConfig, weights: bytes, where: str) -> None:
    """The weights' tensor names and shapes are exactly the architecture's, checked before anything is
    allocated: the architecture is built on torch's meta device (no memory), the weights' header read alone."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in implementation(config).build(config).state_dict().items()}
    except (ValueError, RuntimeError) as exc:
        raise PackageError(f"{where}: model.json describes no buildable model ({str(exc).splitlines()[0][:200]})") \
            from None
    params = sum(int(torch.Size(shape).numel()) for shape in expected.values())
    if params > MAX_PARAMETERS:
        raise PackageError(f"{where}: model.json describes {params:,} parameters, over the limit of "
                           f"{MAX_PARAMETERS:,}")
    found = _weights_header(weights, f"{where}/{WEIGHTS}")
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        what = (f"missing {', '.join(missing[:3])}" if missing else "") + \
            ("; " if missing and unexpected else "") + (f"unexpected {', '.join(unexpected[:3])}" if unexpected else "")
        raise PackageError(f"{where}/{WEIGHTS}: weights do not fit the architecture in model.json ({what})")
    for name, shape in expected.items():
        if found[name][1] != shape:
            raise PackageError(f"{where}/{WEIGHTS}: weights do not fit the architecture in model.json ({name} is "
                               f"{list(found[name][1])}, the architecture needs {list(shape)})")


def load_package(uri: str, storage: StorageSpec | None = None) -> ModelPackage:
    """Load and check a package; never unpickles anything, and allocates nothing before the weights'
    sha256, names and shapes are checked against model.json."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        store = Store(uri, storage)
        if not is_published(store):
            raise PackageError(f"{store.uri}: no published model package here (no manifest.json/_SUCCESS)")
        raw_meta = store.read(MODEL_JSON)
        weights = store.read(WEIGHTS)
    except StorageError as exc:
        raise PackageError(str(exc)) from None
    try:
        meta = json.loads(raw_meta)
        config = parse_config(meta["model"])
    except ValidationError as exc:
        raise PackageError(f"{uri}/{MODEL_JSON}: not a valid model description ({exc.error_count()} problem(s) in "
                           f"'model', e.g. {'.'.join(map(str, exc.errors()[0]['loc']))})") from None
    except (ValueError, KeyError, TypeError) as exc:  # unknown arch (a plugin not installed here), or no 'model'
        first = str(exc).splitlines()[0][:200] if isinstance(exc, ValueError) else type(exc).__name__
        raise PackageError(f"{uri}/{MODEL_JSON}: not a valid model description ({first})") from None
    model_sha = sha256(weights)
    if not isinstance(meta.get("model_sha256"), str):
        raise PackageError(f"{uri}/{MODEL_JSON}: names no model_sha256; every package this pipeline exports has one "
                           "(re-export it with `aigc train`)")
    if meta["model_sha256"] != model_sha:
        raise PackageError(f"{uri}/{WEIGHTS}: sha256 {model_sha[:12]}… does not match model.json "
                           "(corrupt or truncated)")
    check_weights_fit(config, weights, store.uri)
    try:
        state = load(weights)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise PackageError(f"{uri}/{WEIGHTS}: not a readable safetensors file "
                           f"({str(exc).splitlines()[0][:120]})") from None
    return ModelPackage(uri=store.uri, config=config, meta=meta, model_sha256=model_sha, state_dict=state)


def train_version(job) -> str:
    """The package version a job's train stage exports: train.version, else the train-spec fingerprint."""
    assert job.train is not None
    return job.train.version or job.fingerprint("train")[:12]


def train_package_uri(job) -> str:
    """Where a job's train stage exports its model package (what generate loads by default)."""
    return package_uri(job.storage.root, job.name, train_version(job))
