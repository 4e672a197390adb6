"""The family interface: what a kind of generative model brings to the pipeline.

A *family* is a kind of model: the DCGAN, the seed article's MLP GAN, the VAE, the byte-level
GPT, or a user's own. The shared machinery (Ray Train driver, checkpoints and exact resume,
package export and load, shards, commits and publish, run records, the report skeleton) knows no
family by name; it asks the family. A family is two objects:

* a :class:`Family` **declaration**, imported whenever a spec is validated, so it must not import
  torch or Ray: the model configuration class that ``train.model`` holds (``arch`` selects it),
  which data sources, generate formats, gate thresholds and optional settings apply, extra
  cross-field checks, and the import path of its implementation;
* its :class:`Implementation`, imported only when a model of the family is trained, loaded,
  sampled, evaluated or reported.

Register a family of your own through the ``aigc.families`` entry point group (see
``examples/aigc-family-example`` and ``docs/architecture.md``)::

    [project.entry-points."aigc.families"]
    tiny-mlp = "aigc_family_example:FAMILY"

The hooks an implementation fills in are listed on :class:`Implementation`; image families get
most of them from :class:`pipeline.image.family.ImageFamily`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import Field

from pipeline.checks import Strict

GATE_KEYS = ("max_fld", "max_fld_ratio", "min_score", "max_memorization", "min_prompt_accuracy", "max_perplexity",
             "max_bits_per_dim")
TRAIN_OPTIONS = ("ema", "augment", "r1", "lm")  # optional train settings only some families read
IMAGE_FORMATS = ("png", "parquet", "webdataset")  # what an image family writes (docs/webdataset.md)


class ModelConfig(Strict):
    """Base of every family's model configuration (the ``train.model`` section).

    A subclass declares ``arch`` as a one-value ``Literal`` (its registry name) and its own
    fields, each with a description; the spec reference is generated from them.
    """

    preset: str | None = Field(None, description="Name of the preset this came from (informational; use `include:` to "
                                                 "load one).")


def prompts_need_a_condition(job: Any) -> None:
    """``check_job`` of a family whose models are conditional or not by configuration: prompts need one that is."""
    gen, model = job.generate, job.train.model
    if gen is not None and gen.prompts is not None and not model.conditional:
        raise ValueError("generate.prompts: prompts need a conditional model, but train.model.conditional is false")


# the image sources of pipeline.image.data and pipeline.image.sources
IMAGE_SOURCES = ("digits", "images", "parquet", "idx", "pixels", "fashion-mnist", "mnist-5k")

@dataclass(frozen=True)
class Family:
    """A family's declaration: torch-free facts about it, and where its implementation lives.

    ``check_job(job)`` may raise ``ValueError("key.path: reason")`` for settings that do not fit
    the family beyond what the attributes below say.
    """

    arch: str
    config: type[ModelConfig]
    implementation_path: str  # "module:attribute" of an Implementation subclass (or instance)
    summary: str  # one line for `aigc --help`-style listings and the docs
    data_sources: tuple[str, ...] = IMAGE_SOURCES
    formats: tuple[str, ...] = ("png", "parquet")  # what generate.formats may hold
    seeds: bool = True  # generates from latent seeds (generate.seeds)
    gate_keys: tuple[str, ...] = ()  # the evaluate.gate thresholds its evaluation fills
    train_options: tuple[str, ...] = ()  # of TRAIN_OPTIONS
    generate_options: tuple[str, ...] = ()  # optional generate sections it reads ("text", "provenance")
    check_job: Callable[[Any], None] | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def implementation(self) -> Implementation:
        """The family's implementation, imported on first use (it may import torch)."""
        if "impl" not in self._cache:
            module, _, attr = self.implementation_path.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            self._cache["impl"] = obj() if isinstance(obj, type) else obj
        return self._cache["impl"]


class Implementation:
    """The heavy half of a family. Every hook is called by the shared machinery; see each docstring.

    Training (:mod:`pipeline.train.driver`):
        ``load_data``, ``check_data``, ``loop``, ``parts``, ``export``, ``describe``.
    Packages (:mod:`pipeline.package`): ``build``.
    Generation (:mod:`pipeline.generate`): ``prompt_labels``, ``check_generate``, ``sampler_options``,
        ``sampler``, ``manifest_encoder``.
    Evaluation (:mod:`pipeline.evaluate`): ``evaluate``, ``read_results``.
    Report (:mod:`pipeline.report`): ``curves``, ``read_assets``, ``card``.
    """

    #: the checkpoint's model parts that have an optimizer (their state is saved and restored)
    parts: tuple[str, ...] = ()
    #: the function every Ray Train worker runs, ``loop(config: dict) -> None`` (module-level)
    loop: Callable[[dict], None]
    #: the extension of each epoch's samples beside the run (``samples/epoch_NNNN.<ext>``)
    samples_ext: str = "png"

    # -- packages
    def build(self, config: ModelConfig) -> Any:
        """The network a model package holds (the generator, the language model), freshly initialised."""
        raise NotImplementedError

    # -- training
    def load_data(self, job: Any) -> Any:
        """The training data through Ray Data: an object with ``dataset``, ``fingerprint``, ``count``,
        ``classes`` and ``summary()`` (see :class:`pipeline.image.data.TrainData`)."""
        raise NotImplementedError

    def check_data(self, job: Any, data: Any) -> None:
        """Refuse data that cannot train this model (one line naming the field), before any worker starts."""

    def export(self, job: Any, ck: Any, data: Any) -> tuple[Any, ModelConfig, dict]:
        """From the last checkpoint: (the network to export, the config model.json records, extra model.json keys)."""
        raise NotImplementedError

    def describe(self, history: list[dict], data: dict) -> str:
        """One line about a finished training (for `aigc train`, `aigc run` and the run record)."""
        return f"{len(history)} epochs"

    def curves(self, history: list[dict]) -> dict[str, tuple[str, dict[str, list[float]]]]:
        """The report's training curves: file name → (title, {series name: one value per epoch})."""
        return {}

    # -- generation
    def prompt_labels(self, config: ModelConfig) -> tuple[int | None, bool]:
        """(classes a prompt's label may take or None, whether every prompt needs a label)."""
        return (None, False)

    def check_generate(self, job: Any, config: ModelConfig, model_uri: str) -> None:
        """Refuse generate settings that do not fit the loaded model (one line naming the field)."""

    def sampler_options(self, job: Any) -> Any:
        """Plain data the sampler needs beyond the package (shipped to every actor once)."""
        return None

    def sampler(self, package: Any, cfg: Any) -> Any:
        """The generation actor's per-item sampler (see :mod:`pipeline.generate.actor`); ``cfg`` is the
        actor's :class:`~pipeline.generate.actor.ShardConfig` (device, job, model sha256, options)."""
        raise NotImplementedError

    def manifest_encoder(self, config: ModelConfig) -> dict:
        """What wrote an output's files, recorded in its manifest (format names, Parquet schema)."""
        return {}

    # -- evaluation
    def evaluate(self, package: Any, spec: Any, *, data: Any, storage: Any, address: str | None,
                 log: Callable[[str], None]) -> Any:
        """Measure a model package; returns a result (see :class:`pipeline.evaluate.Result`)."""
        raise NotImplementedError

    def read_results(self, package_uri: str, storage: Any) -> list:
        """Every evaluation stored beside a package."""
        return []

    # -- report
    def read_assets(self, store: Any, manifest: dict, limit: int) -> list:
        """Up to ``limit`` assets of a generated output, by item id (see :class:`pipeline.report.Asset`)."""
        return []

    def card(self, asset: Any, file_rel: str | None) -> str:
        """One gallery card (HTML) of an asset; ``file_rel`` is its file in the report, if it has one."""
        raise NotImplementedError
