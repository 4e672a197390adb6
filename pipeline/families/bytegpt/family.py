"""The byte-level GPT family's implementation: what the shared machinery asks of a text model.

Its loop is :mod:`~pipeline.families.bytegpt.loop`, its network :mod:`~pipeline.families.bytegpt.model`,
its corpus :mod:`~pipeline.families.bytegpt.corpus`, its sampler
:mod:`~pipeline.families.bytegpt.sampler` and its evaluation :mod:`~pipeline.families.bytegpt.evaluate`.
"""

from __future__ import annotations

from typing import Any

from pipeline.catalog.base import Implementation
from pipeline.errors import PipelineError
from pipeline.families.bytegpt import loop as text_loop
from pipeline.families.bytegpt.evaluate import evaluate_text_package, read_text_results
from pipeline.families.bytegpt.model import SAMPLER, TOKENIZER
from pipeline.families.bytegpt.model import ByteGPT as ByteGPTNet
from pipeline.families.bytegpt.sampler import TEXT_SCHEMA, CompletionOptions, CompletionSampler
from pipeline.report.assets import parquet_assets, parquet_parts
from pipeline.report.html import esc, provenance_rows
from pipeline.specs.schema import TextSamplingSpec

CARD_KEYS = ["item_id", "seed", "stop_reason", "rejected", "completion_tokens", "model_sha256", "job", "created_at"]


class ByteGPT(Implementation):
    parts = (text_loop.PART,)
    loop = staticmethod(text_loop.loop)
    samples_ext = "txt"

    def build(self, config: Any) -> Any:
        return ByteGPTNet(config)

    # -- training
    def load_data(self, job: Any) -> Any:
        return text_loop.load_text_data(job.train, job.storage)

    def check_data(self, job: Any, data: Any) -> None:
        t = job.train
        corpus, block = data.corpus, t.model.block_size
        n = text_loop.windows(len(corpus.train), block)
        if n == 0:
            raise PipelineError(f"train.model.block_size: {block}, but {corpus.uri} has only {len(corpus.train):,} "
                                f"training tokens, fewer than the {2 * block:,} one window needs; lower block_size or "
                                "use a larger corpus")
        if not corpus.heldout:
            raise PipelineError(f"train.data.heldout: {corpus.uri} holds {corpus.tokens:,} tokens, too few to hold out "
                                f"a {corpus.heldout_share:g} share in 2 KiB segments; raise train.data.heldout or use "
                                "a "
                                "larger corpus")
        per_worker = -(-n // t.scaling.num_workers)
        if per_worker < t.batch_size:
            raise PipelineError(f"train.batch_size: {t.batch_size} per worker, but {n:,} windows of {block + 1} tokens "
                                f"over {t.scaling.num_workers} worker(s) give only {per_worker} each; lower it")

    def export(self, job: Any, ck: Any, data: Any) -> tuple[Any, Any, dict]:
        model = ByteGPTNet(job.train.model)
        text_loop.restore_lm(ck, model)
        return model, job.train.model, {"tokenizer": TOKENIZER, "sampler": SAMPLER}

    def describe(self, history: list[dict], data: dict) -> str:
        last = history[-1] if history else {}
        if "perplexity" not in last:
            return f"{len(history)} epochs"
        return (f"{len(history)} epochs, {data.get('tokens', 0):,} bytes, loss {last['loss']:.3f}, held-out perplexity "
                f"{last['perplexity']:.2f} (unigram {last['unigram_perplexity']:.2f})")

    def curves(self, history: list[dict]) -> dict[str, tuple[str, dict[str, list[float]]]]:
        def col(key: str) -> list[float]:
            return [float(h[key]) if isinstance(h.get(key), (int, float)) else float("nan") for h in history]

        return {"loss.png": ("Cross-entropy per byte (nats) per epoch",
                             {"training loss": col("loss"), "held-out loss": col("heldout_loss")}),
                "perplexity.png": ("Held-out perplexity per byte: model vs unigram baseline",
                                   {"model": col("perplexity"), "unigram baseline": col("unigram_perplexity")})}

    # -- generation
    def check_generate(self, job: Any, config: Any, model_uri: str) -> None:
        if job.generate.prompts is None:
            raise PipelineError(f"generate.prompts: the model at {model_uri} is a text model (bytegpt); it needs a "
                                "prompts file")

    def sampler_options(self, job: Any) -> CompletionOptions:
        gen = job.generate
        return CompletionOptions(sampling=gen.text or TextSamplingSpec(), blocklist=list(gen.safety.blocklist),
                                 allowlist=list(gen.safety.allowlist))

    def sampler(self, package: Any, cfg: Any) -> CompletionSampler:
        return CompletionSampler(package, cfg)

    def manifest_encoder(self, config: Any) -> dict:
        return {"sampler": SAMPLER, "parquet_schema": TEXT_SCHEMA.to_string()}

    # -- evaluation
    def evaluate(self, package: Any, spec: Any, *, data: Any, storage: Any, address: str | None, log: Any) -> Any:
        return evaluate_text_package(package, spec, data=data, storage=storage, log=log)

    def read_results(self, package_uri: str, storage: Any) -> list:
        return read_text_results(package_uri, storage)

    # -- report
    def read_assets(self, store: Any, manifest: dict, limit: int) -> list:
        return parquet_assets(store, parquet_parts(store), limit)

    def card(self, asset: Any, file_rel: str | None) -> str:
        text, prompt = asset.meta.get("completion"), esc(asset.meta.get("prompt", ""))
        shown = f"<b>{prompt}</b>{esc(text)}" if text is not None else f"<b>{prompt}</b> <i>(completion rejected)</i>"
        return (f"<div class='card'><pre style='white-space:pre-wrap'>{shown}</pre>"
                f"<table>{provenance_rows(asset.meta, CARD_KEYS)}</table></div>")
