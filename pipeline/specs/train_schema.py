"""``train``: the data, the model (the configuration of a registered family, chosen by ``arch``),
the optimizer, scaling and checkpoints of the train stage."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from pipeline.catalog.base import ModelConfig
from pipeline.catalog.registry import DEFAULT_ARCH, arch_of, families, family, family_of
from pipeline.checks import Strict, background_rgb, check_name, check_uri


# --------------------------------------------------------------------------------------------- model
def _model_union() -> Any:
    """``train.model``: the configuration class of every registered family, chosen by ``arch``."""
    members = tuple(Annotated[f.config, Tag(arch)] for arch, f in families().items())
    return Annotated[Union[members], Discriminator(arch_of)]  # noqa: UP007 - a runtime-built union


AnyModelConfig = _model_union()
MODEL_ARCHS = tuple(families())


def _default_model() -> ModelConfig:
    return family(DEFAULT_ARCH).config()



def _either(names: tuple[str, ...]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


# --------------------------------------------------------------------------------------------- train
class DataSpec(Strict):
    """Training data."""

    source: Literal["digits", "images", "parquet", "idx", "pixels", "fashion-mnist", "mnist-5k", "text", "audio"] = \
        Field("digits", description="digits (embedded, scikit-learn), images (folder of PNG/JPEG), parquet (image "
                                    "bytes), idx (MNIST's IDX files), pixels (a pixel-row CSV or Parquet table), "
                                    "fashion-mnist or mnist-5k (presets found where their packages install them), "
                                    "text (a corpus for a bytegpt model), or audio (a folder of WAV/FLAC, classes "
                                    "from subfolders, or Parquet with an audio column; for an audio model).")
    uri: str | None = Field(None, description="URI of the image folder or Parquet file/folder (not for digits); idx: "
                                              "the images file (gzipped or not); pixels: the CSV or Parquet table; "
                                              "fashion-mnist: the folder of its IDX files, mnist-5k: its CSV file "
                                              "(default: where the package puts it); text: a .txt, .jsonl or "
                                              ".parquet file, or a folder of them.")
    labels_uri: str | None = Field(None, description="idx: the labels file; default: the images file's sibling "
                                                     "`...-labels-idx1-ubyte[.gz]` when it exists, else unlabelled.")
    split: Literal["train", "test"] | None = Field(None, description="fashion-mnist, mnist-5k: which split (default "
                                                                     "train): fashion-mnist 60,000 / 10,000, mnist-5k "
                                                                     "4,000 / 1,000 (every 5th row, 100 per "
                                                                     "class).")
    image_column: str = Field("image", description="parquet: column with image bytes (or a {bytes, path} struct).")
    label_column: str | None = Field("label", description="parquet: optional integer label column.")
    audio_column: str = Field("audio", description="audio from Parquet: column with WAV/FLAC bytes (or a {bytes, "
                                                   "path} struct, the Hugging Face Audio layout).")
    limit: int | None = Field(None, gt=0, description="Use only the first N examples (handy for quick runs); text: the "
                                                      "first N bytes of the corpus.")
    text_column: str | None = Field(None, description="text: the field of a .jsonl line or the Parquet column holding "
                                                      "the text; default `text`.")
    heldout: float | None = Field(None, gt=0, lt=1, description="text: share of the corpus held out for perplexity "
                                                                "(spread evenly, in 2 KiB segments); default 0.1.")
    shuffle_window: int = Field(16384, ge=1, le=100_000_000, description="Training: rows each worker shuffles at "
                                                                         "a time (its epoch's part streams through "
                                                                         "windows of this many rows, each permuted, "
                                                                         "seeded): a worker's memory for data. A set "
                                                                         "smaller than this is shuffled whole.")
    background: str | None = Field(None, description="images, parquet: colour that transparent pixels are composited "
                                                     "on when the model has no alpha channel: `white`, `black`, `gray` "
                                                     "or `#rrggbb`; default white.")

    @field_validator("background")
    @classmethod
    def _background(cls, v: str | None) -> str | None:
        if v is not None:
            background_rgb(v)
        return v

    @field_validator("uri", "labels_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        return None if v is None else check_uri(v)

    @model_validator(mode="after")
    def _uri_needed(self) -> DataSpec:
        presets = ("fashion-mnist", "mnist-5k")
        if self.source not in ("digits", *presets) and not self.uri:
            raise ValueError(f"source '{self.source}' needs train.data.uri")
        if self.split is not None and self.source not in presets:
            raise ValueError(f"split applies to the presets ({', '.join(presets)}), not to source '{self.source}'")
        if self.labels_uri is not None and self.source != "idx":
            raise ValueError("labels_uri applies to source 'idx' only")
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
    resources_per_worker: dict[str, Annotated[float, Field(ge=0, le=1e6)]] = Field(
        default_factory=dict, description="Extra custom resources per worker (e.g. a node label resource); `GPU` here "
                                          "needs use_gpu: true, CPUs go in cpus_per_worker.")

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
    weight_decay: float = Field(0.1, ge=0, le=10, description="AdamW weight decay of the 2-D weights (matrices, "
                                                              "embeddings); biases and norms are not decayed.")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2.")
    warmup_steps: int = Field(50, ge=0, le=10_000_000, description="Steps of linear learning-rate warm-up (a function "
                                                                   "of the global step, so resume is exact).")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this; null: no clipping.")


class TrainSpec(Strict):
    """The train stage."""

    data: DataSpec = Field(default_factory=DataSpec, description="Training data.")
    model: AnyModelConfig = Field(default_factory=_default_model, description="Model architecture: the configuration "
                                                                              "of a registered family, chosen by "
                                                                              "`arch` (`dcgan`, the default; "
                                                                              "`mlp-gan`, `vae`, `bytegpt`, or an "
                                                                              "installed plugin's).")
    epochs: int = Field(10, ge=1, le=100_000, description="Total epochs (a resumed run continues up to this).")
    batch_size: int = Field(64, ge=1, le=65536, description="Per-worker batch size.")
    lr_g: float = Field(2e-4, gt=0, le=1, description="Generator learning rate (Adam).")
    lr_d: float = Field(2e-4, gt=0, le=1, description="Discriminator learning rate (Adam).")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1.")
    beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for init, data order and noise.")
    ema: float = Field(0.0, ge=0, lt=1, description="GAN: decay of an exponential moving average of G's weights, "
                                                    "updated every step (ramped up as min(ema, (1+step)/(10+step))); "
                                                    "checkpoints carry it and the model package exports it, with "
                                                    "batch-norm statistics recomputed for it. 0: off, G is exported as "
                                                    "trained.")
    augment: list[Literal["translation", "cutout"]] = Field(default_factory=list, description="GAN: differentiable "
                                                                                              "augmentations "
                                                                                              "(DiffAugment) applied "
                                                                                              "to real and generated "
                                                                                              "images alike before D, "
                                                                                              "so D cannot memorize a "
                                                                                              "small data set: "
                                                                                              "`translation` (shift by "
                                                                                              "up to 1/8 of the side), "
                                                                                              "`cutout` (blank a "
                                                                                              "square of half the "
                                                                                              "side).")
    r1: float = Field(0.0, ge=0, le=1e4, description="GAN: weight γ of the R1 penalty γ/2·|∇D(x)|² on the real images "
                                                     "D sees (Mescheder et al. 2018), which keeps D smooth around the "
                                                     "data so training settles instead of circling. 0: off.")
    r1_every: int = Field(4, ge=1, le=1000, description="GAN: apply the R1 penalty every this many steps, weighted r1 "
                                                        "× r1_every (lazy regularization, as in StyleGAN2): about the "
                                                        "same effect for a fraction of the cost.")
    mixed_precision: bool = Field(True, description="bf16/fp16 autocast when training on GPU (ignored on CPU).")
    scaling: TrainScaling = Field(default_factory=TrainScaling, description="Ray Train scaling.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints and recovery.")
    version: str | None = Field(None, max_length=100, description="Model package version (one path segment: letters, "
                                                                  "digits, '-', '_', '.'); default: spec fingerprint.")
    lm: LMSpec | None = Field(None, description="Optimizer settings of a bytegpt model (defaults when left out); lr_g, "
                                                "lr_d, beta1, beta2 are the GAN's.")

    @field_validator("version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        return v if v is None else check_name(v)  # it becomes a folder: models/<name>/<version>

    @model_validator(mode="after")
    def _model_fits_data(self) -> TrainSpec:
        fam = family_of(self.model)
        if self.data.source not in fam.data_sources:
            takers = [a for a, f in families().items() if self.data.source in f.data_sources]
            hint = f" (that is for train.model.arch: {', '.join(takers)})" if takers else ""
            raise ValueError(f"train.data.source: the {fam.arch} architecture trains on "
                             f"{_either(fam.data_sources)} data, not '{self.data.source}'{hint}")
        defaults = TrainSpec.model_construct()
        for option in ("ema", "augment", "r1", "lm"):
            if option not in fam.train_options and getattr(self, option) != getattr(defaults, option):
                raise ValueError(f"train.{option}: does not apply to the {fam.arch} architecture")
        return self
