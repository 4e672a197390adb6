"""``evaluate`` and ``generate``: the quality gate and its measurement; seeds, prompts, the prompt
filter, text sampling, formats, shards and the actor pool."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.checks import (
    MAX_SHARDS,
    TEMPLATE_KEYS,
    TEMPLATE_RE,
    Strict,
    check_env_name,
    check_uri,
    has_userinfo,
)
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
    heldout: DataSpec | None = Field(None, description="A test split the model never trained on (e.g. `split: "
                                                       "test`): the real-vs-real floor's N images are drawn from it "
                                                       "(seeded; N at most its count), the reference set is all of "
                                                       "the evaluation data (the training split: the feature "
                                                       "extractor trains on it, memorization compares against it) "
                                                       "and the classifier's held-out accuracy is measured on it. "
                                                       "Left out: N images of the evaluation data are held out "
                                                       "instead.")
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
    batch_size: int = Field(64, ge=1, le=4096, description="Items sampled together, in one forward pass per step "
                                                          "(fixed micro-batches of a shard, in item order). Part of "
                                                          "the run's fingerprint: the bytes depend on it, never on "
                                                          "actors or retries; 1 samples each item alone.")
    filter_completions: bool = Field(False, description="Apply generate.safety to completions too; a blocked "
                                                        "completion is kept as a row with its reason in `rejected` and "
                                                        "no text.")


_SIGNER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")


class C2paSpec(Strict):
    """C2PA content credentials: each PNG signed last, after its XMP (docs/provenance.md)."""

    cert_chain_env: str = Field(..., description="NAME of the env var holding the PEM certificate chain, end-entity "
                                                 "certificate first (never the certificate itself).")
    private_key_env: str | None = Field(None, description="NAME of the env var holding the PEM (PKCS#8) private key "
                                                          "of the end-entity certificate; leave out when `signer` "
                                                          "signs with a key held in a KMS.")
    signer: str | None = Field(None, description="`module:function` that signs bytes with a key held elsewhere (a "
                                                 "KMS): `function(data: bytes) -> bytes` returns the signature "
                                                 "for `algorithm` (64 raw bytes for Ed25519; for ES256 r and s "
                                                 "concatenated, or DER). Importable on every generation actor.")
    algorithm: Literal["ed25519", "es256"] = Field("ed25519", description="Signature algorithm of the key. Ed25519 "
                                                                          "signatures are deterministic; ES256 ones "
                                                                          "are not.")
    timestamp_url: str | None = Field(None, description="RFC 3161 timestamp authority URL (http or https); each "
                                                        "signature is then timestamped online, and its bytes differ "
                                                        "from run to run.")

    @field_validator("cert_chain_env", "private_key_env")
    @classmethod
    def _env(cls, v: str | None) -> str | None:
        return None if v is None else check_env_name(v, "")

    @field_validator("signer")
    @classmethod
    def _signer(cls, v: str | None) -> str | None:
        if v is not None and not _SIGNER_RE.fullmatch(v):
            raise ValueError("must be an importable `module:function` name, e.g. my_kms.signing:sign")
        return v

    @field_validator("timestamp_url")
    @classmethod
    def _tsa(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.fullmatch(r"https?://[^\s]+", v) or not v.isprintable():
            raise ValueError("must be an http:// or https:// URL")
        if has_userinfo(v):
            raise ValueError("must not carry credentials (user:password@ in the URL)")
        return v

    @model_validator(mode="after")
    def _one_key(self) -> C2paSpec:
        if (self.private_key_env is None) == (self.signer is None):
            raise ValueError("generate.provenance.c2pa: give exactly one of private_key_env (a PEM key in an env var) "
                             "and signer (a module:function that signs with a key held in a KMS)")
        return self


class WatermarkSpec(Strict):
    """An imperceptible watermark (the `invisible-watermark` package) in images of at least 256x256 pixels."""

    method: Literal["dwtDctSvd", "dwtDct"] = Field("dwtDctSvd", description="invisible-watermark's method; dwtDctSvd "
                                                                            "decodes reliably where dwtDct often "
                                                                            "does not.")
    min_psnr: float = Field(30.0, ge=0, le=100, description="Apply the mark only when the marked image stays at "
                                                            "least this close to the original (PSNR, dB) and the mark "
                                                            "reads back; otherwise the image is left unmarked and its "
                                                            "metadata says why.")


class ProvenanceSpec(Strict):
    """What every asset says about its origin beyond the always-on PNG text chunks (docs/provenance.md)."""

    xmp: bool = Field(True, description="An XMP packet in each PNG: IPTC DigitalSourceType trainedAlgorithmicMedia, "
                                        "the IPTC 2025.1 AI fields, xmp:CreatorTool, xmp:CreateDate, dc:description "
                                        "and the aigc namespace (job, item, seed, model sha256).")
    include_prompt: bool = Field(True, description="Embed each item's prompt in its asset's metadata (XMP "
                                                   "AIPromptInformation and the aigc:prompt text chunk). false keeps "
                                                   "prompts out of every asset file; the Parquet row, the job's own "
                                                   "table, still holds it.")
    c2pa: C2paSpec | None = Field(None, description="Sign every PNG with C2PA content credentials; left out: no "
                                                    "signature.")
    watermark: WatermarkSpec | None = Field(None, description="Watermark images of at least 256x256 pixels; left "
                                                              "out: no watermark.")


class GenerateScaling(Strict):
    """Actor pool for generation."""

    num_actors: int = Field(2, ge=1, le=4096, description="Generator actors (each loads the model once).")
    num_gpus: float = Field(0.0, ge=0, le=1024, description="GPUs per actor.")
    num_cpus: float = Field(0.5, gt=0, le=1024, description="CPUs reserved per actor (fractional leaves room for Ray "
                                                            "Data's own tasks). Each actor computes with one torch "
                                                            "thread whatever this says, so the bytes never depend on "
                                                            "it: scale with num_actors.")
    batch_size: int = Field(256, ge=1, le=65536, description="Items per forward pass.")


class GenerateSpec(Strict):
    """The generate stage."""

    model: str | None = Field(None, description="Model package URI; default: the package the train stage exports.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Job seed; item seeds derive from it and the item index.")
    seeds: SeedsSpec | None = Field(None, description="Latent-seed items.")
    prompts: PromptsSpec | None = Field(None, description="Prompt items.")
    output: str = Field("{root}/generated/{name}/{date}", description="Output URI template; {root}, {name}, {date}, "
                                                                      "{run_id} are filled in.")
    formats: list[Literal["png", "wav", "parquet", "webdataset"]] = Field(
        default_factory=lambda: ["png", "parquet"],
        description="What to write: `png` (one image file per item), `wav` (one audio file per item), `parquet` "
                    "(one table per shard), `webdataset` (one tar per shard, each item's file and JSON: "
                    "docs/webdataset.md); any together. The model's family says which it writes.")
    shard_size: int = Field(1000, gt=0, le=10_000_000, description="Items per shard: the unit of work, retry, naming "
                                                                   "and commit.")
    scaling: GenerateScaling = Field(default_factory=GenerateScaling, description="Actor pool.")
    safety: SafetySpec = Field(default_factory=SafetySpec, description="Prompt filter.")
    text: TextSamplingSpec | None = Field(None, description="Sampling of a text (bytegpt) model; defaults when left "
                                                            "out.")
    provenance: ProvenanceSpec | None = Field(None, description="Provenance beyond the PNG text chunks (XMP, C2PA, "
                                                                "watermark); left out: XMP on, prompts included, no "
                                                                "C2PA, no watermark.")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        return None if v is None else check_uri(v)

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one of png, wav, parquet, webdataset")
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
