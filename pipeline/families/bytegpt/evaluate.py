"""Held-out perplexity of a text (bytegpt) model beside a unigram baseline, both measured in the same run.

    aigc evaluate outputs/models/text-demo/<version>

:func:`pipeline.evaluate.evaluate_package` hands a text package here (through the family). The corpus is the one the
package was trained on (its model.json's ``train.data``) unless ``evaluate.data`` names another,
split exactly as in training (:mod:`pipeline.families.bytegpt.corpus`), so the held-out segments are bytes the
model never saw. On those segments:

* **model**: every token but a segment's first is predicted from the earlier tokens of its
  window (:func:`pipeline.families.bytegpt.model.score_segments`); perplexity = exp(mean NLL per byte);
* **unigram baseline**: the byte frequencies of the training split (add-one smoothing over the
  257 tokens) predict the very same tokens. A model that learned anything beyond byte frequency
  is below it.

The result lives in ``<package>.eval/perplexity.json`` (a rerun with the same model and corpus
reads it) and shows in ``aigc evaluate``, the run record and ``aigc report``. The gate:
``evaluate.gate.max_perplexity``. ``evaluate.samples`` does not apply: every held-out byte is scored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from pipeline.errors import PipelineError
from pipeline.families.bytegpt.corpus import Score, load_corpus, unigram_nll
from pipeline.families.bytegpt.model import score_segments
from pipeline.layout import eval_uri
from pipeline.report.html import esc, gate_cell
from pipeline.specs.schema import DataSpec, EvaluateSpec, GateSpec, StorageSpec
from pipeline.storage import StorageError, Store, absolute_uri, package_versions

TEXT_EVAL_FORMAT = "aigc-eval-text/1"
RESULT = "perplexity.json"


@dataclass
class TextMetrics:
    """Per-byte figures of one model of the held-out bytes."""

    perplexity: float
    bits_per_byte: float
    nll: float  # mean negative log-likelihood per byte, in nats

    @classmethod
    def of(cls, score: Score) -> TextMetrics:
        return cls(perplexity=score.perplexity, bits_per_byte=score.bits_per_byte, nll=score.mean)

    def to_json(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in dataclasses.asdict(self).items()}


@dataclass
class TextEvalResult:
    """One evaluation of one text package: the model beside the unigram baseline."""

    model_uri: str
    model_sha256: str
    n: int  # held-out bytes scored
    key: str
    data: dict[str, Any]
    model: TextMetrics
    baseline: TextMetrics
    seconds: float
    created_at: str
    uri: str = ""
    skipped: bool = False

    @property
    def ratio(self) -> float:
        return self.model.perplexity / self.baseline.perplexity

    def to_json(self) -> dict[str, Any]:
        return {"format": TEXT_EVAL_FORMAT, "model_uri": absolute_uri(self.model_uri),
                "model_sha256": self.model_sha256, "n": self.n, "key": self.key, "data": self.data,
                "metrics": {"model": self.model.to_json(), "unigram": self.baseline.to_json()},
                "seconds": round(self.seconds, 2), "created_at": self.created_at, "versions": package_versions()}

    @classmethod
    def from_json(cls, d: dict[str, Any], uri: str = "") -> TextEvalResult:
        m = d["metrics"]
        return cls(model_uri=d["model_uri"], model_sha256=d["model_sha256"], n=d["n"], key=d["key"], data=d["data"],
                   model=TextMetrics(**m["model"]), baseline=TextMetrics(**m["unigram"]), seconds=d["seconds"],
                   created_at=d["created_at"], uri=uri)

    def summary(self) -> str:
        return (f"held-out perplexity {self.model.perplexity:.2f} vs unigram {self.baseline.perplexity:.2f} "
                f"({self.ratio:.2f}x) on {self.n:,} bytes")

    def lines(self, gate: GateSpec | None = None) -> list[str]:
        g = gate or GateSpec()
        d = self.data
        seen = "" if d.get("same_as_training", True) else "  (NOT the corpus this model was trained on)"
        out = [f"evaluate {self.model_uri}",
               f"  {self.n:,} held-out bytes ({d.get('heldout', 0):g} of {d.get('uri', '?')}, {d.get('segments', 0)} "
               f"segments); unigram baseline from the {d.get('train_tokens', 0):,} training bytes{seen}",
               f"  {'metric':<14} {'model':>9} {'unigram':>9} {'model/unigram':>14}  gate"]
        gate_txt = ""
        if g.max_perplexity is not None:
            ok = self.model.perplexity <= g.max_perplexity
            gate_txt = f"<= {g.max_perplexity:g}  " + ("ok" if ok else "FAILED")
        out.append(f"  {'perplexity':<14} {self.model.perplexity:>9.3f} {self.baseline.perplexity:>9.3f} "
                   f"{self.ratio:>13.2f}x  {gate_txt}".rstrip())
        out.append(f"  {'bits per byte':<14} {self.model.bits_per_byte:>9.3f} {self.baseline.bits_per_byte:>9.3f} "
                   f"{self.model.bits_per_byte / self.baseline.bits_per_byte:>13.2f}x")
        return out

    def record(self) -> dict[str, Any]:
        """What the run record keeps of it (beside the gate's verdict)."""
        return {"model": self.model.to_json(), "unigram": self.baseline.to_json(), "data": self.data}

    def report_files(self) -> dict[str, bytes]:
        return {}

    def html(self, gate: GateSpec | None, files: dict[str, str]) -> str:
        """Its report section: held-out perplexity beside the unigram baseline."""
        limit = (gate or GateSpec()).max_perplexity
        cell = "" if limit is None else gate_cell("<=", f"{limit:g}", self.model.perplexity <= limit)
        rows = [("perplexity per byte", f"{self.model.perplexity:.3f}", f"{self.baseline.perplexity:.3f}",
                 f"{self.ratio:.2f}×", cell),
                ("bits per byte", f"{self.model.bits_per_byte:.3f}", f"{self.baseline.bits_per_byte:.3f}",
                 f"{self.model.bits_per_byte / self.baseline.bits_per_byte:.2f}×", "")]
        body = "".join(f"<tr><td>{esc(a)}</td><td class='num'>{esc(b)}</td><td class='num'>{esc(c)}</td>"
                       f"<td class='num'>{esc(d)}</td><td>{e}</td></tr>" for a, b, c, d, e in rows)
        d = self.data
        caption = (f"{self.n:,} held-out bytes ({d.get('segments', 0)} segments, a {d.get('heldout', 0):g} share of "
                   f"{d.get('uri', '?')}); the unigram baseline is the byte frequencies of the "
                   f"{d.get('train_tokens', 0):,} training bytes, scored on the same bytes; computed {self.created_at}")
        if not d.get("same_as_training", True):
            caption += "; NOT the corpus this model was trained on"
        return (f"<h3>Held-out perplexity</h3><p>{esc(caption)}</p><table><tr><th>metric</th><th>model</th>"
                f"<th>unigram baseline</th><th>model / baseline</th><th>gate</th></tr>{body}</table>")

    def gate_failures(self, gate: GateSpec) -> list[str]:
        if gate.max_perplexity is not None and not self.model.perplexity <= gate.max_perplexity:
            return [f"held-out perplexity {self.model.perplexity:.2f} > evaluate.gate.max_perplexity "
                    f"{gate.max_perplexity:g} (unigram baseline {self.baseline.perplexity:.2f})"]
        return []


def evaluate_text_package(pkg: Any, spec: EvaluateSpec, *, data: DataSpec | None,
                          storage: StorageSpec | None, log: Callable[[str], None] = print) -> TextEvalResult:
    """Score a text package on its held-out corpus; reuse ``<package>.eval/perplexity.json`` when it matches."""
    t0 = time.monotonic()
    data = data or pkg.trained_on()
    if data is None:
        raise PipelineError(f"evaluate.data: the model package at {pkg.uri} does not say what it was trained on; "
                            "set evaluate.data to its corpus")
    if data.source != "text":
        raise PipelineError(f"evaluate.data: {pkg.uri} is a text model; it is scored on a text corpus "
                            f"(source: text), not '{data.source}'")
    if spec.heldout is not None:
        raise PipelineError(f"evaluate.heldout: does not apply to the text model at {pkg.uri}; its held-out text "
                            "is a share of its corpus (evaluate.data.heldout)")
    corpus = load_corpus(data, storage)
    if not corpus.heldout:
        raise PipelineError(f"evaluate.data: {corpus.uri} holds no held-out segment "
                            f"at heldout {corpus.heldout_share:g}")
    key = hashlib.sha256(json.dumps({"format": TEXT_EVAL_FORMAT, "model": pkg.model_sha256,
                                     "data": corpus.fingerprint}).encode()).hexdigest()[:16]
    out = Store(eval_uri(pkg.uri), storage)
    cached = _cached(out, key)
    if cached is not None:
        return cached
    log(f"evaluate: scoring {corpus.heldout_tokens:,} held-out bytes of {corpus.uri}")
    nll, count = score_segments(pkg.build_model(), corpus.heldout)
    model = Score(nll=nll, count=count)
    unigram = unigram_nll(corpus.train, corpus.heldout)
    trained_on = (pkg.meta.get("data") or {}).get("fingerprint")
    result = TextEvalResult(
        model_uri=pkg.uri, model_sha256=pkg.model_sha256, n=count, key=key,
        data={"uri": corpus.uri, "fingerprint": corpus.fingerprint, "heldout": corpus.heldout_share,
              "segments": len(corpus.heldout), "heldout_tokens": corpus.heldout_tokens,
              "train_tokens": len(corpus.train), "same_as_training": trained_on == corpus.fingerprint},
        model=TextMetrics.of(model), baseline=TextMetrics.of(unigram), seconds=time.monotonic() - t0,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    if not math.isfinite(result.model.perplexity):
        raise PipelineError(f"evaluate: the model's held-out perplexity is {result.model.perplexity} (diverged "
                            "weights?)")
    out.write_json(RESULT, result.to_json())
    result.uri = out.url(RESULT)
    return result


def _cached(out: Store, key: str) -> TextEvalResult | None:
    try:
        if not out.exists(RESULT):
            return None
        prev = out.read_json(RESULT)
        if prev.get("key") == key:
            res = TextEvalResult.from_json(prev, out.url(RESULT))
            res.skipped = True
            return res
    except (StorageError, KeyError, TypeError, ValueError, AttributeError):
        pass
    return None  # another model, another corpus or an unreadable file: compute it again


def read_text_results(package_uri: str, storage: StorageSpec | None = None) -> list[TextEvalResult]:
    """The evaluation stored beside a text package (none or one)."""
    out = Store(eval_uri(package_uri), storage)
    try:
        if not out.exists(RESULT):
            return []
        return [TextEvalResult.from_json(out.read_json(RESULT), out.url(RESULT))]
    except (StorageError, KeyError, TypeError, ValueError, AttributeError):
        return []
