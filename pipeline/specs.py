"""Job specs: every pydantic model of a job, YAML loading, includes, `--set` overrides, templating.

A job spec is one YAML file (see `jobs/demo.yaml`). Load it with :func:`load_job`::

    job = load_job("jobs/demo.yaml", overrides=["generate.seeds.count=100"])

Every problem becomes a :class:`SpecError` whose lines read
``jobs/x.yaml: generate.seeds.count: must be greater than 0``.

The key paths named in the README's spec reference (``storage.root``, ``train.epochs``,
``generate.output``, ...) are the public interface; keep them stable.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, SecretStr, Tag, TypeAdapter, ValidationError,
                      field_validator, model_validator)

SCHEMES = ("file", "s3", "gs", "gcs", "memory")
_URI_RE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# Names and ids are checked with fullmatch: `$` would let a trailing newline through.
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# Tokens that look nothing like an env-var name: cloud keys and the prefixes services put on theirs.
_TOKEN_RE = re.compile(
    r"(AKIA|ASIA|AIza|ghp_|gho_|ghu_|ghs_|ghr_|github_pat_|glpat-|xox[abprs]-|sk_live_|sk_test_|rk_live_|rk_test_"
    r"|pk_live_|sk-|hf_|npm_|pypi-|dop_v1_|AGE-SECRET-KEY-)[A-Za-z0-9_\-]{8,}")
# Limits on what a spec can ask to plan (the driver plans every shard before Ray starts).
MAX_SHARDS = 1_000_000
MAX_ITEMS = 10**10
_TEMPLATE_RE = re.compile(r"\{([^{}]*)\}")
TEMPLATE_KEYS = ("date", "run_id", "name")


class SpecError(Exception):
    """A job spec could not be loaded; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        # One problem is one line: escape newlines and other line breaks a user's value may carry.
        self.problems = [_one_line(p) for p in problems] or ["invalid job spec"]
        super().__init__("\n".join(self.problems))


def _one_line(text: str) -> str:
    """``text`` with every non-printable character (newline, \\u2028, NUL, ...) escaped."""
    text = str(text)
    if text.isprintable():
        return text or "invalid job spec"
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def uri_scheme(uri: str) -> str:
    """Return the scheme of a URI; plain paths are ``file``."""
    m = _URI_RE.match(uri)
    return m.group(1).lower() if m else "file"


def _check_uri(value: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError("must not be empty")
    if not value.isprintable():
        raise ValueError("must not contain control characters or line breaks")
    if "://" in value and not _URI_RE.match(value):
        raise ValueError(f"malformed URI scheme '{value.split('://')[0][:40]}://'")
    if _has_userinfo(value):  # s3://KEY:SECRET@bucket: never echo it
        raise ValueError("must not carry credentials (user:password@ in the URI); name env vars in "
                         "storage.credentials instead")
    scheme = uri_scheme(value)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown storage scheme '{scheme}://' (supported: local path, {', '.join(s + '://' for s in SCHEMES)})")
    return value


def _norm_location(uri: str) -> str:
    """A URI in a comparable form ending in '/': local paths and file:// absolute and normalized."""
    if uri_scheme(uri) == "file":
        path = uri[len("file://"):] if uri.lower().startswith("file://") else uri
        return os.path.abspath(os.path.expanduser(path)).rstrip("/") + "/"
    scheme, _, rest = uri.partition("://")
    scheme = {"gcs": "gs"}.get(scheme.lower(), scheme.lower())
    return f"{scheme}://" + "/".join(p for p in rest.split("/") if p not in ("", ".")) + "/"


def _has_userinfo(uri: str) -> bool:
    """``scheme://user:pass@host/...``: credentials in the authority part of a URI."""
    m = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*)", uri)
    return bool(m and "@" in m.group(1))


def _segments(uri: str) -> list[str]:
    """A URI (or a rendered template, NUL for each value) as comparable path segments, scheme first."""
    return _norm_location(uri).rstrip("/").split("/")


def _prefix_could_match(template: list[str], path: list[str]) -> bool:
    """Whether the shorter of the two is a folder prefix of the longer for some value of the templates
    (NUL in a segment of ``template`` stands for any non-empty text without '/')."""
    return all(re.fullmatch("[^/]+".join(re.escape(part) for part in t.split("\x00")), p)
               for t, p in zip(template, path))


def _looks_like_key(value: str) -> bool:
    """A key or token where an env-var name belongs: a known token prefix, or a long mixed-case random string.

    Env-var names are words joined by ``_`` (``AWS_SECRET_ACCESS_KEY``, ``MyToken_2``); tokens are long runs
    of mixed case and digits (``ghp_…``, ``sk_live_…``, base64).
    """
    if _TOKEN_RE.match(value):
        return True
    if len(value) >= 32 and "_" not in value:
        return True
    runs = [r for r in value.split("_") if r]
    return any(len(r) >= 16 and re.search(r"[a-z]", r) and re.search(r"[A-Z]", r) and re.search(r"[0-9]", r)
               for r in runs)


def _check_name(value: str, what: str = "") -> str:
    """A job name or model version: one safe path segment (no '/', no '..', no trailing newline)."""
    if not _NAME_RE.fullmatch(value) or ".." in value:
        raise ValueError(f"{what}must be letters, digits, '-', '_' or '.', starting with a letter or digit (no '..')")
    return value


def _check_env_name(value: str, where: str = "") -> str:
    """An env-var NAME, or ValueError that never echoes the value (it may be a secret)."""
    if not isinstance(value, str) or _looks_like_key(value) or not _ENV_NAME_RE.fullmatch(value):
        raise ValueError(f"{where}must be the NAME of an environment variable (letters, digits and _, not starting "
                         "with a digit); never put a secret itself in a spec")
    return value


_NAMED_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128), "grey": (128, 128, 128)}


def background_rgb(value: str) -> tuple[int, int, int]:
    """A colour of train.data.background as (r, g, b); ValueError when it is none."""
    v = value.strip().lower()
    if v in _NAMED_COLOURS:
        return _NAMED_COLOURS[v]
    m = re.fullmatch(r"#([0-9a-f]{3}|[0-9a-f]{6})", v)
    if not m:
        raise ValueError("must be white, black, gray or a #rrggbb colour")
    h = m.group(1) if len(m.group(1)) == 6 else "".join(c * 2 for c in m.group(1))
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors, values are validated on assignment."""

    # allow_inf_nan=False: `.inf`/`.nan` in any float field (num_cpus, lr, ...) is a spec error, not a Ray crash.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


# --------------------------------------------------------------------------------------------- storage
class Credentials(Strict):
    """Where S3/GCS credentials come from. Only environment-variable *names* live in a spec."""

    access_key_env: str | None = Field(None, description="Name of the env var holding the access key id (e.g. AWS_ACCESS_KEY_ID).")
    secret_key_env: str | None = Field(None, description="Name of the env var holding the secret access key.")
    session_token_env: str | None = Field(None, description="Name of the env var holding a session token, if any.")
    profile: str | None = Field(None, description="Named profile in ~/.aws/credentials to use instead of env vars.")
    token_file_env: str | None = Field(None, description="gs://: name of the env var holding a service-account JSON path.")

    @field_validator("access_key_env", "secret_key_env", "session_token_env", "token_file_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        return v if v is None else _check_env_name(v)


class StorageSpec(Strict):
    """Root of everything a job writes, and how to reach it."""

    root: str = Field("outputs", description="Root URI: a local path, file://, s3://bucket/prefix, gs://bucket/prefix or memory://path.")
    endpoint: str | None = Field(None, description="S3 endpoint URL for S3-compatible stores (MinIO, moto, R2). Default: AWS, or $AWS_ENDPOINT_URL.")
    region: str | None = Field(None, description="S3 region name.")
    credentials: Credentials = Field(default_factory=Credentials, description="Credential sources, as env-var names.")
    secret_key: SecretStr | None = Field(None, description="Refused: secrets never go in a spec; use credentials.secret_key_env.")
    max_concurrency: int = Field(32, ge=1, le=1024, description="Parallel uploads when writing many small objects.")

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        return _check_uri(v)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", v):
            raise ValueError("must be an http:// or https:// URL")
        if v is not None and _has_userinfo(v):  # https://user:pass@host: never echo it
            raise ValueError("must not carry credentials (user:password@); name env vars in storage.credentials")
        return v

    @field_validator("secret_key")
    @classmethod
    def _no_plain_secret(cls, v: SecretStr | None) -> None:
        if v is not None:
            raise ValueError("plain-text secrets are refused; name an env var in storage.credentials.secret_key_env")
        return None


# --------------------------------------------------------------------------------------------- model
class TextEncoderSpec(Strict):
    """Prompt → condition: a hashed word/character n-gram embedding trained jointly with the GAN."""

    buckets: int = Field(32768, ge=16, le=2**22, description="Hash buckets of the n-gram embedding table.")
    dim: int = Field(64, ge=2, le=4096, description="Width of the n-gram embeddings.")
    hidden: int = Field(128, ge=2, le=8192, description="Hidden width of the MLP from the n-gram bag to the condition.")
    min_ngram: int = Field(2, ge=1, le=10, description="Shortest character n-gram (words carry < and > marks).")
    max_ngram: int = Field(5, ge=1, le=10, description="Longest character n-gram.")
    lr: float = Field(2e-3, gt=0, le=1, description="Learning rate (Adam) of the text encoder, which learns from caption cross-entropy.")
    classes: list[str] | None = Field(None, description="Class names that captions are made from, by label id; default: the training data's classes (digits: 0-9, folders: subfolder names).")

    @model_validator(mode="after")
    def _ngrams(self) -> TextEncoderSpec:
        if self.min_ngram > self.max_ngram:
            raise ValueError(f"min_ngram ({self.min_ngram}) is larger than max_ngram ({self.max_ngram})")
        return self


class ModelSpec(Strict):
    """Architecture of the generator (and its discriminator)."""

    arch: Literal["dcgan"] = Field("dcgan", description="Architecture name in the model registry.")
    preset: str | None = Field(None, description="Name of the preset this came from (informational; use `include:` to load one).")
    image_size: Literal[28, 32, 64] = Field(32, description="Output side in pixels.")
    channels: Literal[1, 3] = Field(1, description="1 = grayscale, 3 = RGB.")
    z_dim: int = Field(64, ge=1, le=4096, description="Latent vector size.")
    g_width: int = Field(64, ge=4, le=1024, description="Generator base feature width.")
    d_width: int = Field(64, ge=4, le=1024, description="Discriminator base feature width.")
    conditional: bool = Field(False, description="Class-conditioned G and D (label embedding / projection).")
    num_classes: int = Field(10, ge=2, le=100_000, description="Number of classes when conditional.")
    g_upsample: Literal["transposed", "nearest", "bilinear"] = Field("transposed", description="How G doubles its feature maps: `transposed` (DCGAN's stride-2 transposed conv) or a `nearest`/`bilinear` upsample followed by a 3x3 conv (no checkerboard artifacts).")
    d_minibatch_std: bool = Field(False, description="D appends the batch's feature standard deviation (ProGAN's minibatch-stddev) before its output, so a batch of look-alikes is easy to tell from real variety.")
    text_encoder: TextEncoderSpec | None = Field(None, description="Condition G on prompt text instead of a label embedding (needs conditional: true).")

    @model_validator(mode="after")
    def _text_needs_classes(self) -> ModelSpec:
        if self.text_encoder is not None and not self.conditional:
            raise ValueError("text_encoder needs conditional: true (captions are made from class labels)")
        if self.text_encoder is not None and self.text_encoder.classes is not None \
                and len(self.text_encoder.classes) != self.num_classes:
            raise ValueError(f"text_encoder.classes has {len(self.text_encoder.classes)} names for num_classes {self.num_classes}")
        return self


class TextModelSpec(Strict):
    """A small byte-level GPT (nanoGPT-style causal self-attention) for text completion."""

    arch: Literal["bytegpt"] = Field(..., description="`bytegpt`: vocabulary of the 256 byte values plus an end-of-text token.")
    preset: str | None = Field(None, description="Name of the preset this came from (informational).")
    n_layer: int = Field(4, ge=1, le=64, description="Transformer blocks.")
    n_head: int = Field(4, ge=1, le=64, description="Attention heads per block (must divide n_embd).")
    n_embd: int = Field(128, ge=8, le=4096, description="Embedding width.")
    block_size: int = Field(128, ge=8, le=4096, description="Context length in bytes (tokens).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout in training (sampling never drops).")

    @model_validator(mode="after")
    def _heads(self) -> TextModelSpec:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")
        return self


def _model_arch(value: Any) -> str:
    """The union tag of a model section: its ``arch``, ``dcgan`` when left out (older specs)."""
    arch = value.get("arch", "dcgan") if isinstance(value, dict) else getattr(value, "arch", "dcgan")
    return arch if isinstance(arch, str) else repr(arch)


# train.model: the DCGAN (default, `arch` may be left out) or the byte-level GPT, chosen by `arch`.
AnyModelSpec = Annotated[Union[Annotated[ModelSpec, Tag("dcgan")], Annotated[TextModelSpec, Tag("bytegpt")]],
                         Discriminator(_model_arch)]
MODEL_ARCHS = ("dcgan", "bytegpt")


def parse_model_spec(data: Any) -> ModelSpec | TextModelSpec:
    """A ``train.model`` section (e.g. from a package's model.json) as the spec of its architecture."""
    return TypeAdapter(AnyModelSpec).validate_python(data)


def is_text_model(model: Any) -> bool:
    return isinstance(model, TextModelSpec)


# --------------------------------------------------------------------------------------------- train
class DataSpec(Strict):
    """Training data."""

    source: Literal["digits", "images", "parquet", "text"] = Field("digits", description="digits (embedded, scikit-learn), images (folder of PNG/JPEG), parquet, or text (a corpus for a bytegpt model).")
    uri: str | None = Field(None, description="URI of the image folder or Parquet file/folder (not for digits); text: a .txt, .jsonl or .parquet file, or a folder of them.")
    image_column: str = Field("image", description="parquet: column with image bytes (or a {bytes, path} struct).")
    label_column: str | None = Field("label", description="parquet: optional integer label column.")
    limit: int | None = Field(None, gt=0, description="Use only the first N examples (handy for quick runs); text: the first N bytes of the corpus.")
    text_column: str | None = Field(None, description="text: the field of a .jsonl line or the Parquet column holding the text; default `text`.")
    heldout: float | None = Field(None, gt=0, lt=1, description="text: share of the corpus held out for perplexity (spread evenly, in 2 KiB segments); default 0.1.")
    background: str | None = Field(None, description="images, parquet: colour that transparent pixels are composited on when the model has no alpha channel: `white`, `black`, `gray` or `#rrggbb`; default white.")

    @field_validator("background")
    @classmethod
    def _background(cls, v: str | None) -> str | None:
        if v is not None:
            background_rgb(v)
        return v

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return None if v is None else _check_uri(v)

    @model_validator(mode="after")
    def _uri_needed(self) -> DataSpec:
        if self.source != "digits" and not self.uri:
            raise ValueError(f"source '{self.source}' needs train.data.uri")
        if self.source == "digits" and self.uri:
            raise ValueError("source 'digits' is embedded and takes no uri")
        if self.source != "text" and (self.text_column is not None or self.heldout is not None):
            raise ValueError("text_column and heldout apply to source 'text' only")
        return self


class TrainScaling(Strict):
    """How many Ray Train workers and what each gets."""

    num_workers: int = Field(1, ge=1, le=4096, description="Ray Train workers (DDP ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker; enables mixed precision.")
    cpus_per_worker: float = Field(1.0, gt=0, le=1024, description="CPUs reserved per worker.")
    resources_per_worker: dict[str, Annotated[float, Field(ge=0, le=1e6)]] = Field(default_factory=dict, description="Extra custom resources per worker (e.g. a node label resource); `GPU` here needs use_gpu: true, CPUs go in cpus_per_worker.")

    @model_validator(mode="after")
    def _resources(self) -> TrainScaling:
        for name in self.resources_per_worker:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_:.\-/]{0,99}", name):
                raise ValueError("train.scaling.resources_per_worker: resource names are letters, digits, '_', "
                                 "'-', '.', ':' or '/'")
        if "CPU" in self.resources_per_worker:
            raise ValueError("train.scaling.resources_per_worker: CPU is set by train.scaling.cpus_per_worker")
        if self.resources_per_worker.get("GPU") and not self.use_gpu:
            raise ValueError("train.scaling.resources_per_worker: GPU needs train.scaling.use_gpu: true")
        return self


class CheckpointSpec(Strict):
    """Checkpointing and recovery."""

    keep: int = Field(2, ge=1, le=1000, description="Keep the last K checkpoints.")
    max_failures: int = Field(2, ge=-1, description="Worker-group restarts from the last checkpoint; -1 = unlimited.")
    resume: bool = Field(True, description="Rerunning the same job continues from its last checkpoint.")


class LMSpec(Strict):
    """Optimizer of the byte-level GPT: AdamW with linear warm-up, then a constant learning rate."""

    lr: float = Field(1e-3, gt=0, le=1, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.1, ge=0, le=10, description="AdamW weight decay of the 2-D weights (matrices, embeddings); biases and norms are not decayed.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    warmup_steps: int = Field(50, ge=0, le=10_000_000, description="Steps of linear learning-rate warm-up (a function of the global step, so resume is exact).")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this; null: no clipping.")


class TrainSpec(Strict):
    """The train stage."""

    data: DataSpec = Field(default_factory=DataSpec, description="Training data.")
    model: AnyModelSpec = Field(default_factory=ModelSpec, description="Model architecture: a DCGAN (`arch: dcgan`, the default) or a byte-level GPT (`arch: bytegpt`).")
    epochs: int = Field(10, ge=1, le=100_000, description="Total epochs (a resumed run continues up to this).")
    batch_size: int = Field(64, ge=1, le=65536, description="Per-worker batch size.")
    lr_g: float = Field(2e-4, gt=0, le=1, description="Generator learning rate (Adam).")
    lr_d: float = Field(2e-4, gt=0, le=1, description="Discriminator learning rate (Adam).")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for init, data order and noise.")
    ema: float = Field(0.0, ge=0, lt=1, description="GAN: decay of an exponential moving average of G's weights, updated every step (ramped up as min(ema, (1+step)/(10+step))); checkpoints carry it and the model package exports it, with batch-norm statistics recomputed for it. 0: off, G is exported as trained.")
    augment: list[Literal["translation", "cutout"]] = Field(default_factory=list, description="GAN: differentiable augmentations (DiffAugment) applied to real and generated images alike before D, so D cannot memorize a small data set: `translation` (shift by up to 1/8 of the side), `cutout` (blank a square of half the side).")
    r1: float = Field(0.0, ge=0, le=1e4, description="GAN: weight γ of the R1 penalty γ/2·|∇D(x)|² on the real images D sees (Mescheder et al. 2018), which keeps D smooth around the data so training settles instead of circling. 0: off.")
    r1_every: int = Field(4, ge=1, le=1000, description="GAN: apply the R1 penalty every this many steps, weighted r1 × r1_every (lazy regularization, as in StyleGAN2): about the same effect for a fraction of the cost.")
    mixed_precision: bool = Field(True, description="bf16/fp16 autocast when training on GPU (ignored on CPU).")
    scaling: TrainScaling = Field(default_factory=TrainScaling, description="Ray Train scaling.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints and recovery.")
    version: str | None = Field(None, max_length=100, description="Model package version (one path segment: letters, digits, '-', '_', '.'); default: spec fingerprint.")
    lm: LMSpec | None = Field(None, description="Optimizer settings of a bytegpt model (defaults when left out); lr_g, lr_d, beta1, beta2 are the GAN's.")

    @field_validator("version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        return v if v is None else _check_name(v)  # it becomes a folder: models/<name>/<version>

    @model_validator(mode="after")
    def _model_fits_data(self) -> TrainSpec:
        text_model, text_data = is_text_model(self.model), self.data.source == "text"
        if text_model and not text_data:
            raise ValueError(f"train.data.source: a bytegpt model trains on a text corpus (source: text), not '{self.data.source}'")
        if text_data and not text_model:
            raise ValueError("train.model.arch: source 'text' trains a text model; set train.model.arch: bytegpt")
        if self.lm is not None and not text_model:
            raise ValueError("train.lm: applies to a bytegpt model only (train.model.arch: bytegpt)")
        if text_model and (self.ema or self.augment or self.r1):
            raise ValueError("train.ema, train.augment, train.r1: apply to a GAN only, not to a bytegpt model")
        return self


# --------------------------------------------------------------------------------------------- evaluate
class GateSpec(Strict):
    """Quality gate: a nightly run refuses to publish when any threshold fails."""

    max_fld: float | None = Field(None, ge=0, description="Largest acceptable Frechet distance on domain-classifier features.")
    max_fld_ratio: float | None = Field(None, gt=0, description="Largest acceptable FLD as a multiple of the real-vs-real floor measured in the same evaluation (same data, N and extractor): 2 means at most twice what held-out real images score. Unlike max_fld it carries across data sets and N.")
    min_score: float | None = Field(None, ge=0, description="Smallest acceptable classifier score (IS-style).")
    max_memorization: float | None = Field(None, ge=0, le=1, description="Largest acceptable share of near-copies of training images.")
    min_prompt_accuracy: float | None = Field(None, ge=0, le=1, description="Text-conditioned generators: smallest acceptable share of images from held-out prompt phrasings that the domain classifier labels as the prompt's class.")
    max_perplexity: float | None = Field(None, ge=1, description="Text models: largest acceptable held-out perplexity (per byte).")


class EvaluateSpec(Strict):
    """The evaluate stage."""

    samples: int = Field(1000, gt=0, le=10_000_000, description="Generated samples per metric (scores are biased by N).")
    gate: GateSpec = Field(default_factory=GateSpec, description="Publication thresholds.")
    model: str | None = Field(None, description="Model package URI to evaluate; default: the train stage's package, else generate.model.")
    data: DataSpec | None = Field(None, description="Real data to compare with; default: the data the model was trained on (train.data, else its model.json).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the held-out split, the latents and the feature extractor.")
    extractor: Literal["auto", "classifier", "autoencoder"] = Field("auto", description="Feature extractor: a classifier on labelled data, an autoencoder on unlabelled (auto picks).")
    k: int = Field(3, ge=1, le=100, description="Neighbourhood size of the k-NN manifolds for precision and recall.")
    memorization_quantile: float = Field(0.01, gt=0, lt=1, description="Copy threshold: this quantile of real images' nearest-neighbour pixel distances to the other training images.")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        return None if v is None else _check_uri(v)


# --------------------------------------------------------------------------------------------- generate
class SeedsSpec(Strict):
    """A range of latent seeds: items start .. start+count-1."""

    start: int = Field(0, ge=0, le=2**62, description="First item index.")
    count: int = Field(..., gt=0, le=10**10, description="Number of items.")


class PromptsSpec(Strict):
    """A prompts file: .txt (one per line), .jsonl (prompt, n, label), .csv or .parquet."""

    uri: str = Field(..., description="URI of the prompts file.")
    samples_per_prompt: int = Field(1, gt=0, le=100_000, description="Images per prompt (a .jsonl `n` overrides).")
    on_error: Literal["fail", "skip"] = Field("fail", description="A malformed line: fail naming the line, or skip and record it in rejected.jsonl.")
    max_length: int = Field(1000, gt=0, le=1_000_000, description="Longest accepted prompt, in characters.")

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        v = _check_uri(v)
        if not re.search(r"\.(txt|jsonl|csv|parquet)$", v):
            raise ValueError("prompts file must end in .txt, .jsonl, .csv or .parquet")
        return v


class SafetySpec(Strict):
    """Prompt filter applied before generation."""

    blocklist: list[str] = Field(default_factory=list, description="Words/phrases rejected on word boundaries (case-insensitive).")
    allowlist: list[str] = Field(default_factory=list, description="Words that are never blocked even when they contain a blocked term.")


class TextSamplingSpec(Strict):
    """How a text model completes each prompt (every item samples from its own seeded generator)."""

    temperature: float = Field(0.8, ge=0, le=100, description="Divides the logits before sampling; 0 = greedy (always the most likely byte).")
    top_k: int | None = Field(40, ge=1, le=257, description="Sample among the k most likely tokens only; null: all 257.")
    max_new_tokens: int = Field(128, ge=1, le=100_000, description="Most bytes generated per completion (it stops earlier at the end-of-text token).")
    filter_completions: bool = Field(False, description="Apply generate.safety to completions too; a blocked completion is kept as a row with its reason in `rejected` and no text.")


class GenerateScaling(Strict):
    """Actor pool for generation."""

    num_actors: int = Field(2, ge=1, le=4096, description="Generator actors (each loads the model once).")
    num_gpus: float = Field(0.0, ge=0, le=1024, description="GPUs per actor.")
    num_cpus: float = Field(0.5, gt=0, le=1024, description="CPUs reserved per actor (fractional leaves room for Ray Data's own tasks).")
    batch_size: int = Field(256, ge=1, le=65536, description="Items per forward pass.")


class GenerateSpec(Strict):
    """The generate stage."""

    model: str | None = Field(None, description="Model package URI; default: the package the train stage exports.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Job seed; item seeds derive from it and the item index.")
    seeds: SeedsSpec | None = Field(None, description="Latent-seed items.")
    prompts: PromptsSpec | None = Field(None, description="Prompt items.")
    output: str = Field("{root}/generated/{name}/{date}", description="Output URI template; {root}, {name}, {date}, {run_id} are filled in.")
    formats: list[Literal["png", "parquet"]] = Field(default_factory=lambda: ["png", "parquet"], description="What to write.")
    shard_size: int = Field(1000, gt=0, le=10_000_000, description="Items per shard: the unit of work, retry, naming and commit.")
    scaling: GenerateScaling = Field(default_factory=GenerateScaling, description="Actor pool.")
    safety: SafetySpec = Field(default_factory=SafetySpec, description="Prompt filter.")
    text: TextSamplingSpec | None = Field(None, description="Sampling of a text (bytegpt) model; defaults when left out.")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        return None if v is None else _check_uri(v)

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one of png, parquet")
        if len(set(v)) != len(v):
            raise ValueError("must not repeat a format")
        return v

    @field_validator("output")
    @classmethod
    def _output(cls, v: str) -> str:
        for key in _TEMPLATE_RE.findall(v):
            if key not in TEMPLATE_KEYS + ("root",):
                raise ValueError(f"unknown template '{{{key}}}' (use {{root}}, {{name}}, {{date}}, {{run_id}})")
        if not v.startswith("{root}"):
            _check_uri(v)
        if ".." in v.replace("\\", "/").split("/"):
            raise ValueError("must not contain '..'")
        return v

    @model_validator(mode="after")
    def _inputs(self) -> GenerateSpec:
        if self.seeds is None and self.prompts is None:
            raise ValueError("needs generate.seeds and/or generate.prompts")
        if self.seeds is not None and -(-self.seeds.count // self.shard_size) > MAX_SHARDS:
            raise ValueError(f"generate.seeds.count: {self.seeds.count:,} items in shards of {self.shard_size:,} are "
                             f"{-(-self.seeds.count // self.shard_size):,} shards, over the limit of {MAX_SHARDS:,}; "
                             "raise generate.shard_size")
        return self


# --------------------------------------------------------------------------------------------- job
class JobSpec(Strict):
    """A whole job: any of the stages train, evaluate, generate."""

    name: str = Field(..., min_length=1, max_length=100, description="Job name: letters, digits, '-', '_', '.'.")
    storage: StorageSpec = Field(default_factory=StorageSpec, description="Where outputs, checkpoints and models go.")
    env: list[str] = Field(default_factory=list, description="Env-var names passed to the cluster on `aigc submit`.")
    train: TrainSpec | None = Field(None, description="Train stage.")
    evaluate: EvaluateSpec | None = Field(None, description="Evaluate stage.")
    generate: GenerateSpec | None = Field(None, description="Generate stage.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            _check_env_name(name, f"item {i}: ")
        return v

    @model_validator(mode="after")
    def _cross(self) -> JobSpec:
        if self.train is None and self.evaluate is None and self.generate is None:
            raise ValueError("a job needs at least one of train, evaluate, generate")
        gen = self.generate
        if gen is not None and gen.prompts is not None:
            model = self.train.model if self.train else None
            if model is not None and not is_text_model(model) and not model.conditional:
                raise ValueError(
                    "generate.prompts: prompts need a conditional model, "
                    "but train.model.conditional is false"
                )
            if model is None and gen.model is None:
                raise ValueError("generate.prompts: prompts need a conditional model; set generate.model or a train stage")
        if gen is not None and gen.model is None and self.train is None:
            raise ValueError("generate.model: needed when the job has no train stage")
        if self.train is not None:
            self._check_text(is_text_model(self.train.model))
        if gen is not None:
            self._check_output_place(gen)
        return self

    def _check_output_place(self, gen: GenerateSpec) -> None:
        """generate.output never overlaps data the job reads, nor storage.root and the folders above it.

        Generate publishes by removing files of its own that no shard lists, so a folder that also holds
        training data, models or checkpoints must never be one it writes into. Templates ({name},
        {date}, {run_id}) are checked for every value they could take.
        """
        rendered = gen.output.replace("{root}", self.storage.root.rstrip("/")).replace("{name}", self.name)
        out = _segments(_TEMPLATE_RE.sub("\x00", rendered))
        root = _segments(self.storage.root)
        if len(out) <= len(root) and _prefix_could_match(out, root):
            raise ValueError("generate.output: must not be storage.root or a folder above it (models/, checkpoints/ "
                             "and runs/ live there); use e.g. {root}/generated/{name}/{date}")
        for folder in ("models", "checkpoints", "runs"):
            if _prefix_could_match(out, root + [folder]):
                raise ValueError(f"generate.output: must not overlap storage.root's {folder}/ folder; "
                                 "use e.g. {root}/generated/{name}/{date}")
        for where, uri in self._data_uris():
            data = _segments(uri)
            if _prefix_could_match(out, data):
                inside = len(out) >= len(data)
                raise ValueError(f"generate.output: must not be {'inside' if inside else 'a folder above'} the "
                                 f"training data ({where}); a run owns its output folder")

    def _data_uris(self) -> list[tuple[str, str]]:
        out = []
        if self.train is not None and self.train.data.uri:
            out.append(("train.data.uri", self.train.data.uri))
        if self.evaluate is not None and self.evaluate.data is not None and self.evaluate.data.uri:
            out.append(("evaluate.data.uri", self.evaluate.data.uri))
        return out

    def _check_text(self, text: bool) -> None:
        """Settings of one kind of model (image or text) given to a job that trains the other kind."""
        gen, ev = self.generate, self.evaluate
        if text and gen is not None:
            if gen.seeds is not None:
                raise ValueError("generate.seeds: a text model (train.model.arch: bytegpt) completes prompts; "
                                 "use generate.prompts")
            if "formats" in gen.model_fields_set and "png" in gen.formats:
                raise ValueError("generate.formats: a text model writes Parquet only; set formats: [parquet]")
        if not text and gen is not None and gen.text is not None:
            raise ValueError("generate.text: applies to a text model (train.model.arch: bytegpt)")
        if ev is not None:
            image_gate = [k for k in GateSpec.model_fields if k != "max_perplexity" and getattr(ev.gate, k) is not None]
            if text and image_gate:
                raise ValueError(f"evaluate.gate.{image_gate[0]}: applies to image models; a text model is gated by "
                                 "evaluate.gate.max_perplexity")
            if not text and ev.gate.max_perplexity is not None:
                raise ValueError("evaluate.gate.max_perplexity: applies to a text model (train.model.arch: bytegpt)")

    # ------------------------------------------------------------------ helpers
    def fingerprint(self, *sections: str) -> str:
        """sha256 of the canonical JSON of the named sections (all when none)."""
        data = self.model_dump(mode="json", include=set(sections) if sections else None, exclude_none=True)
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def masked(self) -> dict[str, Any]:
        """The spec as plain data, safe to print or store (no secret values)."""
        return self.model_dump(mode="json", exclude_none=True)


# --------------------------------------------------------------------------------------------- loading
_MSG_REWRITES = [
    (re.compile(r"^Input should be (greater|less) than or equal to"), r"must be \1 than or equal to"),
    (re.compile(r"^Input should be"), "must be"),
    (re.compile(r"^Extra inputs are not permitted$"), "unknown key (not part of the spec)"),
    (re.compile(r"^Field required$"), "missing required key"),
    (re.compile(r"^Value error, "), ""),
    (re.compile(r"^Assertion failed, "), ""),
    (re.compile(r"^Input tag (.*) found using _model_arch\(\) does not match any of the expected tags: (.*)$"),
     r"unknown architecture \1 (use one of \2)"),
]


def _friendly(msg: str) -> str:
    for pat, rep in _MSG_REWRITES:
        msg = pat.sub(rep, msg)
    return msg


def _format_errors(source: str, err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        parts = e["loc"]
        # train.model is a union chosen by `arch`: pydantic puts the chosen tag into the path; leave it out.
        parts = [p for i, p in enumerate(parts) if not (p in MODEL_ARCHS and i and parts[i - 1] == "model")]
        loc = ".".join(str(p) for p in parts if not (isinstance(p, str) and p.startswith("function-")))
        msg = _friendly(e["msg"])
        # Model-level checks put the field in the message ("generate.prompts: ..."); don't repeat the loc.
        if re.match(r"^[a-z_]+(\.[a-z_0-9]+)+: ", msg):
            lines.append(f"{source}: {msg}")
        else:
            lines.append(f"{source}: {loc or '<root>'}: {msg}")
    return lines


def _duplicate_key(node: Any, path: tuple[str, ...] = ()) -> tuple[str, int] | None:
    """The first key that a YAML mapping repeats, as (key path, line), anywhere under ``node``.

    PyYAML keeps the last of two equal keys without a word; a second ``safety: {}`` would silently
    drop the blocklist above it. Walks iteratively: the nesting depth is the user's to choose.
    """
    stack = [(node, path)]
    while stack:
        n, p = stack.pop()
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in n.value:
                key = str(k.value) if isinstance(k, yaml.ScalarNode) else f"<{k.tag.rsplit(':', 1)[-1]} key>"
                if isinstance(k, yaml.ScalarNode) and key in seen and key != "<<":
                    return ".".join(p + (key,)), k.start_mark.line + 1
                seen.add(key)
                stack.append((v, p + (key,)))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend((v, p + (str(i),)) for i, v in enumerate(n.value))
    return None


def _yaml_load(text: str, source: str) -> Any:
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            dup = _duplicate_key(node)
            if dup is not None:
                raise SpecError([f"{source}: line {dup[1]}: {dup[0]}: duplicate key (each key may appear once)"])
            return loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except SpecError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError([f"{source}: {where}invalid YAML: {problem}"]) from None
    except RecursionError:
        raise SpecError([f"{source}: invalid YAML: nested too deeply"]) from None
    except Exception as exc:  # noqa: BLE001 - PyYAML constructors raise ValueError etc. (`2020-02-30`, `!!int x`)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SpecError([f"{source}: invalid YAML value: {first}"]) from None


def deep_merge(base: dict, over: dict) -> dict:
    """Recursively merge ``over`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _resolve_include(name: str, job_path: Path, source: str) -> Path:
    candidates = [job_path.parent / name, Path.cwd() / name, Path.cwd() / "configs" / name]
    for base in (job_path.parent, *job_path.parents):
        candidates.append(base / "configs" / name)
    for c in candidates:
        try:  # names like '/' (no stem) or 5,000 characters (ENAMETOOLONG) are just "not found"
            for cand in (c, c.with_suffix(".yaml")) if not c.suffix else (c,):
                if cand.is_file():
                    return cand
        except (OSError, ValueError):
            continue
    raise SpecError([f"{source}: include: '{name}' not found (looked beside the job and in configs/)"])


MAX_INCLUDE_FILES = 64  # distinct files one job may pull in
MAX_INCLUDES = 256  # include references in all, counting a file named twice twice


class _Includes:
    """What one load_job has read: each file parsed and merged once, however often it is included."""

    def __init__(self) -> None:
        self.loaded: dict[Path, dict] = {}
        self.files = 0
        self.references = 0

    def load(self, path: Path, source: str, seen: tuple[Path, ...]) -> dict:
        key = path.resolve()
        if key in seen:
            raise SpecError([f"{source}: include: '{path}' includes itself"])
        if key not in self.loaded:
            self.files += 1  # counted on the way down: a chain of 1,000 includes stops at the 65th
            if self.files > MAX_INCLUDE_FILES:
                raise SpecError([f"{source}: include: more than {MAX_INCLUDE_FILES} files in one job"])
            self.loaded[key] = _load_raw(path, source, seen, self)
        return self.loaded[key]


def _load_raw(path: Path, source: str, seen: tuple[Path, ...] = (), includes: _Includes | None = None) -> dict:
    includes = includes or _Includes()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{source}: file not found"]) from None
    except UnicodeDecodeError as exc:
        raise SpecError([f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    except OSError as exc:
        raise SpecError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    data = _yaml_load(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError([f"{source}: a job spec must be a YAML mapping, not {type(data).__name__}"])
    names = data.pop("include", None)
    if names is None:
        return data
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(i, str) for i in names):
        raise SpecError([f"{source}: include: must be a file name or a list of file names"])
    merged: dict = {}
    for inc in names:
        includes.references += 1
        if includes.references > MAX_INCLUDES:
            raise SpecError([f"{source}: include: more than {MAX_INCLUDES} includes in one job"])
        inc_path = _resolve_include(inc, path, source)
        merged = deep_merge(merged, includes.load(inc_path, str(inc_path), seen + (path.resolve(),)))
    return deep_merge(merged, data)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=c"`` → (["a", "b"], parsed YAML scalar of c)."""
    if "=" not in item:
        raise SpecError([f"--set {item}: expected KEY=VALUE, e.g. generate.seeds.count=100"])
    key, _, raw = item.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise SpecError([f"--set {item}: '{key}' is not a dotted key path"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except Exception:  # noqa: BLE001 - YAMLError, or ValueError from `!!int x` / `2020-02-30`: keep the text
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise SpecError([f"--set {item}: '{part}' is not a section"])
            node = nxt
        node[path[-1]] = value
    return out


def load_job(path: str | os.PathLike, overrides: list[str] | None = None) -> JobSpec:
    """Load, merge includes, apply ``--set`` overrides and validate a job spec file."""
    p = Path(path)
    source = str(path)
    data = _load_raw(p, source)
    data = apply_overrides(data, overrides or [])
    return validate_job(data, source)


def validate_job(data: Any, source: str = "<spec>") -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError([f"{source}: a job spec must be a mapping, not {type(data).__name__}"])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_errors(source, exc)) from None
    except (RecursionError, OverflowError) as exc:  # pathological inputs (huge ints, deep nesting)
        raise SpecError([f"{source}: cannot validate: {type(exc).__name__}"]) from None


# --------------------------------------------------------------------------------------------- templating
def today() -> str:
    return _dt.date.today().isoformat()


def check_date(value: str) -> str:
    try:
        return _dt.date.fromisoformat(value).isoformat()
    except ValueError:
        raise SpecError([f"--date {value}: expected YYYY-MM-DD"]) from None


def check_run_id(value: str) -> str:
    if not isinstance(value, str) or not _RUN_ID_RE.fullmatch(value) or ".." in value:
        raise SpecError([f"--run-id {value}: use letters, digits, '-', '_' or '.' (no '/', no '..')"])
    return value


def render_output(job: JobSpec, date: str | None = None, run_id: str | None = None) -> str:
    """The generate output URI with {root}, {name}, {date}, {run_id} filled in."""
    assert job.generate is not None
    date = check_date(date) if date else today()
    run_id = check_run_id(run_id) if run_id else date
    values = {"root": job.storage.root.rstrip("/"), "name": job.name, "date": date, "run_id": run_id}
    return _TEMPLATE_RE.sub(lambda m: values[m.group(1)], job.generate.output).rstrip("/")


# --------------------------------------------------------------------------------------------- reference
def reference_markdown() -> str:
    """The spec reference (docs/spec-reference.md), generated from the models' field descriptions."""
    lines = ["# Job spec reference", "",
             "Generated from `pipeline/specs.py` by `python -m pipeline.specs > docs/spec-reference.md`; "
             "a test keeps it in sync. Every model is strict: an unknown key is an error.", ""]

    def models_in(ann: Any) -> list[type[BaseModel]]:
        """The spec models a field holds: one, or each member of a union (``train.model``)."""
        out = []
        for a in getattr(ann, "__args__", (ann,)):
            a = typing.get_args(a)[0] if typing.get_origin(a) is Annotated else a
            if isinstance(a, type) and issubclass(a, BaseModel):
                out.append(a)
        return out

    def walk(model: type[BaseModel], prefix: str, label: str = "") -> None:
        rows, nested = [], []
        for name, f in model.model_fields.items():
            ann = f.annotation
            subs = models_in(ann)
            sub = subs[0] if subs else None
            path = f"{prefix}{name}"
            if f.is_required():
                default = "required"
            elif f.default_factory is not None:
                default = "see below" if sub else f"`{f.default_factory()}`"
            else:
                default = f"`{f.default}`"
            typ = "section" if sub else str(ann).replace("typing.", "").replace("pydantic.types.", "").replace("<class '", "").replace("'>", "").replace(" | ", " or ")
            rows.append(f"| `{path}` | {typ} | {default} | {f.description or ''} |")
            if len(subs) > 1:  # a union chosen by `arch`: one table per architecture
                nested += [(s, path + ".", f" (arch: {typing.get_args(s.model_fields['arch'].annotation)[0]})")
                           for s in subs]
            elif sub:
                nested.append((sub, path + ".", ""))
        lines.extend([f"## `{prefix.rstrip('.') or '(top level)'}`{label}", "", model.__doc__.strip().splitlines()[0] if model.__doc__ else "", "",
                      "| key | type | default | meaning |", "|---|---|---|---|", *rows, ""])
        for sub, p, lab in nested:
            walk(sub, p, lab)

    walk(JobSpec, "")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
