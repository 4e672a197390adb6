"""``evaluate`` and ``generate``: the quality gate and its measurement; seeds, prompts, the prompt
filter, text sampling, formats, shards and the actor pool."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.checks import MAX_SHARDS, TEMPLATE_KEYS, TEMPLATE_RE, Strict, check_uri
from pipeline.specs.train_schema import DataSpec


# --------------------------------------------------------------------------------------------- evaluate
class GateSpec(Strict):
    """Quality gate: a nightly run refuses to publish when any threshold fails."""

    max_fld: float | None = Field(None, ge=0, description="Largest acceptable Frechet distance on domain-classifier "
                                                          "features.")
    max_fld_ratio: float | None = Field(None, gt=0, description="Largest acceptable FLD as a multiple of the "
                                                                "real-vs-real floor measured in the same evaluation "
                                                                "(same data, N and extractor): 2 means at most twice "
                                                                "what held-out real images score. Unlike max_fld it "
                                                                "carries across data sets and N.")
    min_score: float | None = Field(None, ge=0, description="Smallest acceptable classifier score (IS-style).")
    max_memorization: float | None = Field(None, ge=0, le=1, description="Largest acceptable share of near-copies of "
                                                                         "training images.")
    min_prompt_accuracy: float | None = Field(None, ge=0, le=1, description="Text-conditioned generators: smallest "
                                                                            "acceptable share of images from held-out "
                                                                            "prompt phrasings that the domain "
                                                                            "classifier labels as the prompt's class.")
    max_perplexity: float | None = Field(None, ge=1, description="Text models: largest acceptable held-out perplexity "
                                                                 "(per byte).")
    max_bits_per_dim: float | None = Field(None, gt=0, description="VAE: largest acceptable held-out negative ELBO in "
                                                                   "bits per dimension (a bound on the pixels' code "
                                                                   "length).")


class EvaluateSpec(Strict):
    """The evaluate stage."""

    samples: int = Field(1000, gt=0, le=10_000_000,
                         description="Generated samples per metric (scores are biased by N).")
    gate: GateSpec = Field(default_factory=GateSpec, description="Publication thresholds.")
    model: str | None = Field(None, description="Model package URI to evaluate; default: the train stage's package, "
                                                "else generate.model.")
    data: DataSpec | None = Field(None, description="Real data to compare with; default: the data the model was "
                                                    "trained on (train.data, else its model.json).")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of the held-out split, the latents and the feature "
                                                         "extractor.")
    extractor: Literal["auto", "classifier", "autoencoder"] = Field("auto", description="Feature extractor: a "
                                                                                        "classifier on labelled data, "
                                                                                        "an autoencoder on unlabelled "
                                                                                        "(auto picks).")
    k: int = Field(3, ge=1, le=100, description="Neighbourhood size of the k-NN manifolds for precision and recall.")
    memorization_quantile: float = Field(0.01, gt=0, lt=1, description="Copy threshold: this quantile of real images' "
                                                                       "nearest-neighbour pixel distances to the other "
                                                                       "training images.")

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
    on_error: Literal["fail", "skip"] = Field("fail", description="A malformed line: fail naming the line, or skip and "
                                                                  "record it in rejected.jsonl.")
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

    blocklist: list[str] = Field(default_factory=list, description="Words/phrases rejected on word boundaries "
                                                                   "(case-insensitive).")
    allowlist: list[str] = Field(default_factory=list, description="Words that are never blocked even when they "
                                                                   "contain a blocked term.")


class TextSamplingSpec(Strict):
    """How a text model completes each prompt (every item samples from its own seeded generator)."""

    temperature: float = Field(0.8, ge=0, le=100, description="Divides the logits before sampling; 0 = greedy (always "
                                                              "the most likely byte).")
    top_k: int | None = Field(40, ge=1, le=257,
                              description="Sample among the k most likely tokens only; null: all 257.")
    max_new_tokens: int = Field(128, ge=1, le=100_000, description="Most bytes generated per completion (it stops "
                                                                   "earlier at the end-of-text token).")
    filter_completions: bool = Field(False, description="Apply generate.safety to completions too; a blocked "
                                                        "completion is kept as a row with its reason in `rejected` and "
                                                        "no text.")


class GenerateScaling(Strict):
    """Actor pool for generation."""

    num_actors: int = Field(2, ge=1, le=4096, description="Generator actors (each loads the model once).")
    num_gpus: float = Field(0.0, ge=0, le=1024, description="GPUs per actor.")
    num_cpus: float = Field(0.5, gt=0, le=1024, description="CPUs reserved per actor (fractional leaves room for Ray "
                                                            "Data's own tasks).")
    batch_size: int = Field(256, ge=1, le=65536, description="Items per forward pass.")


class GenerateSpec(Strict):
    """The generate stage."""

    model: str | None = Field(None, description="Model package URI; default: the package the train stage exports.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Job seed; item seeds derive from it and the item index.")
    seeds: SeedsSpec | None = Field(None, description="Latent-seed items.")
    prompts: PromptsSpec | None = Field(None, description="Prompt items.")
    output: str = Field("{root}/generated/{name}/{date}", description="Output URI template; {root}, {name}, {date}, "
                                                                      "{run_id} are filled in.")
    formats: list[Literal["png", "parquet"]] = Field(default_factory=lambda: ["png", "parquet"], description="What to "
                                                                                                             "write.")
    shard_size: int = Field(1000, gt=0, le=10_000_000, description="Items per shard: the unit of work, retry, naming "
                                                                   "and commit.")
    scaling: GenerateScaling = Field(default_factory=GenerateScaling, description="Actor pool.")
    safety: SafetySpec = Field(default_factory=SafetySpec, description="Prompt filter.")
    text: TextSamplingSpec | None = Field(None, description="Sampling of a text (bytegpt) model; defaults when left "
                                                            "out.")

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
