"""The job spec schema: every pydantic model of a job, from ``storage`` to ``generate``.

``train.model`` is the configuration class of the model's family, chosen by ``arch`` from the
family registry (:mod:`pipeline.families.registry`), so an installed third-party family is a valid
``arch`` with no edit here. Which data sources, formats, gate thresholds and optional settings
apply to a model is the family's to say (:class:`~pipeline.families.base.Family`); this module
checks them without knowing any family by name.

The key paths named in the spec reference (``storage.root``, ``train.epochs``,
``generate.output``, ...) are the public interface; keep them stable.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, SecretStr, Tag, field_validator, model_validator

from pipeline.checks import (
    MAX_SHARDS,
    TEMPLATE_KEYS,
    TEMPLATE_RE,
    Strict,
    background_rgb,
    check_env_name,
    check_name,
    check_uri,
    has_userinfo,
    output_overlap,
)
from pipeline.families.base import ModelConfig
from pipeline.families.registry import DEFAULT_ARCH, arch_of, families, family, family_of


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
        return v if v is None else check_env_name(v)


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
        return check_uri(v)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[^/\s]+(/\S*)?", v):
            raise ValueError("must be an http:// or https:// URL")
        if v is not None and has_userinfo(v):  # https://user:pass@host: never echo it
            raise ValueError("must not carry credentials (user:password@); name env vars in storage.credentials")
        return v

    @field_validator("secret_key")
    @classmethod
    def _no_plain_secret(cls, v: SecretStr | None) -> None:
        if v is not None:
            raise ValueError("plain-text secrets are refused; name an env var in storage.credentials.secret_key_env")
        return None


# --------------------------------------------------------------------------------------------- model
def _model_union() -> Any:
    """``train.model``: the configuration class of every registered family, chosen by ``arch``."""
    members = tuple(Annotated[f.config, Tag(arch)] for arch, f in families().items())
    return Annotated[Union[members], Discriminator(arch_of)]  # noqa: UP007 - a runtime-built union


AnyModelConfig = _model_union()
MODEL_ARCHS = tuple(families())


def _default_model() -> ModelConfig:
    return family(DEFAULT_ARCH).config()


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
        return None if v is None else check_uri(v)

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
    model: AnyModelConfig = Field(default_factory=_default_model, description="Model architecture: the configuration of a registered family, chosen by `arch` (`dcgan`, the default; `mlp-gan`, `vae`, `bytegpt`, or an installed plugin's).")
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
        return v if v is None else check_name(v)  # it becomes a folder: models/<name>/<version>

    @model_validator(mode="after")
    def _model_fits_data(self) -> TrainSpec:
        fam = family_of(self.model)
        if self.data.source not in fam.data_sources:
            takers = [a for a, f in families().items() if self.data.source in f.data_sources]
            raise ValueError(f"train.data.source: the {fam.arch} architecture trains on {' or '.join(fam.data_sources)} "
                             f"data, not '{self.data.source}'" + (f" (that is for train.model.arch: {', '.join(takers)})"
                                                                  if takers else ""))
        defaults = TrainSpec.model_construct()
        for option in ("ema", "augment", "r1", "lm"):
            if option not in fam.train_options and getattr(self, option) != getattr(defaults, option):
                raise ValueError(f"train.{option}: does not apply to the {fam.arch} architecture")
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
    max_bits_per_dim: float | None = Field(None, gt=0, description="VAE: largest acceptable held-out negative ELBO in bits per dimension (a bound on the pixels' code length).")


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
        return None if v is None else check_uri(v)


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
        v = check_uri(v)
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
        return None if v is None else check_uri(v)

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
        for key in TEMPLATE_RE.findall(v):
            if key not in TEMPLATE_KEYS + ("root",):
                raise ValueError(f"unknown template '{{{key}}}' (use {{root}}, {{name}}, {{date}}, {{run_id}})")
        if not v.startswith("{root}"):
            check_uri(v)
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
        return check_name(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: list[str]) -> list[str]:
        for i, name in enumerate(v):
            check_env_name(name, f"item {i}: ")
        return v

    @model_validator(mode="after")
    def _cross(self) -> JobSpec:
        if self.train is None and self.evaluate is None and self.generate is None:
            raise ValueError("a job needs at least one of train, evaluate, generate")
        gen = self.generate
        if gen is not None and gen.prompts is not None and self.train is None and gen.model is None:
            raise ValueError("generate.prompts: prompts need a conditional model; set generate.model or a train stage")
        if gen is not None and gen.model is None and self.train is None:
            raise ValueError("generate.model: needed when the job has no train stage")
        if self.train is not None:
            self._check_family()
        if gen is not None:
            self._check_output_place(gen)
        return self

    def _check_family(self) -> None:
        """The settings that apply to the train stage's family: its formats, seeds, gate and options."""
        assert self.train is not None
        fam = family_of(self.train.model)
        gen, ev = self.generate, self.evaluate
        if gen is not None:
            if gen.seeds is not None and not fam.seeds:
                raise ValueError(f"generate.seeds: the {fam.arch} architecture does not generate from latent seeds; "
                                 "use generate.prompts")
            odd = [f for f in gen.formats if f not in fam.formats]
            if odd and "formats" in gen.model_fields_set:  # the default is cut to what the family writes
                raise ValueError(f"generate.formats: the {fam.arch} architecture writes {', '.join(fam.formats)} only; "
                                 f"set formats: [{', '.join(fam.formats)}]")
            for option in ("text",):
                if getattr(gen, option) is not None and option not in fam.generate_options:
                    raise ValueError(f"generate.{option}: does not apply to the {fam.arch} architecture")
        if ev is not None:
            for key in GateSpec.model_fields:
                if getattr(ev.gate, key) is not None and key not in fam.gate_keys:
                    raise ValueError(f"evaluate.gate.{key}: does not apply to the {fam.arch} architecture (its "
                                     f"thresholds: {', '.join('evaluate.gate.' + k for k in fam.gate_keys) or 'none'})")
        if fam.check_job is not None:
            fam.check_job(self)

    def _check_output_place(self, gen: GenerateSpec) -> None:
        data = [(where, uri) for where, section in (("train.data.uri", self.train and self.train.data),
                                                    ("evaluate.data.uri", self.evaluate and self.evaluate.data))
                if section is not None and (uri := section.uri)]
        problem = output_overlap(gen.output, self.storage.root, self.name, data)
        if problem:
            raise ValueError(f"generate.output: {problem}")

    # ------------------------------------------------------------------ helpers
    def fingerprint(self, *sections: str) -> str:
        """sha256 of the canonical JSON of the named sections (all when none)."""
        data = self.model_dump(mode="json", include=set(sections) if sections else None, exclude_none=True)
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def masked(self) -> dict[str, Any]:
        """The spec as plain data, safe to print or store (no secret values)."""
        return self.model_dump(mode="json", exclude_none=True)
