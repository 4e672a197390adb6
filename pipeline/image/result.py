"""An image evaluation's result: the figures beside the floor, the gate's verdict on them, and how
they read in the CLI, the run record and the report."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from pipeline.image.metrics import Copy, Metrics
from pipeline.report.html import esc, gate_cell, src
from pipeline.specs.schema import GateSpec
from pipeline.storage import absolute_uri, package_versions

# aigc-eval/2 adds the per-class figures (``classes``) and, with a test split, its data; aigc-eval/1 files read
# as before (no per-class figures). KEY_FORMAT salts the result key: it moves only when an existing
# evaluation's figures would change, so the keys of earlier evaluations stand.
EVAL_FORMAT = "aigc-eval/2"
KEY_FORMAT = "aigc-eval/1"


@dataclass
class EvalResult:
    """One evaluation of one model package at one N."""

    model_uri: str
    model_sha256: str
    n: int
    key: str
    extractor: dict[str, Any]
    data: dict[str, Any]
    settings: dict[str, Any]
    model: Metrics
    floor: Metrics
    threshold: float
    copies: list[Copy]
    seconds: float
    created_at: str
    uri: str = ""  # where the result JSON is
    skipped: bool = False  # read from an earlier evaluation
    prompts: dict[str, Any] | None = None  # text-conditioned generators: prompt_accuracy()
    # a family's own figures beside the shared ones: name → {"value", "label", "note", "gate": a GateSpec
    # key bounding it from above, or None} (the VAE's held-out bits per dimension)
    extra: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    closest_png: bytes | None = None  # the closest generated/training pairs, for the report
    # per class (labelled data, classifier features): metrics.class_figures(); None otherwise and in aigc-eval/1
    classes: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": EVAL_FORMAT, "model_uri": absolute_uri(self.model_uri), "model_sha256": self.model_sha256,
                "n": self.n, "key": self.key, "extractor": self.extractor, "data": self.data, "settings": self.settings,
                "metrics": {"model": self.model.to_json(), "floor": self.floor.to_json()},
                "memorization": {"space": "pixel", "distance": "RMS per pixel, pixels in [0, 1]",
                                 "threshold": round(self.threshold, 6),
                                 "quantile": self.settings["memorization_quantile"],
                                 "closest": [dataclasses.asdict(c) for c in self.copies]},
                "seconds": round(self.seconds, 2), "created_at": self.created_at, "versions": package_versions(),
                **({"prompts": self.prompts} if self.prompts is not None else {}),
                **({"extra": self.extra} if self.extra else {}),
                **({"classes": self.classes} if self.classes is not None else {})}

    @classmethod
    def from_json(cls, d: dict[str, Any], uri: str = "") -> EvalResult:
        m = d["metrics"]
        return cls(model_uri=d["model_uri"], model_sha256=d["model_sha256"], n=d["n"], key=d["key"],
                   extractor=d["extractor"], data=d["data"], settings=d["settings"], model=Metrics(**m["model"]),
                   floor=Metrics(**m["floor"]), threshold=d["memorization"]["threshold"],
                   copies=[Copy(**c) for c in d["memorization"].get("closest", [])], seconds=d["seconds"],
                   created_at=d["created_at"], uri=uri, prompts=d.get("prompts"), extra=d.get("extra") or {},
                   classes=d.get("classes"))

    def summary(self) -> str:
        """One line for run summaries."""
        m, f = self.model, self.floor
        score = f", score {m.score:.2f} ({f.score:.2f})" if m.score is not None and f.score is not None else ""
        prompts = f", prompt accuracy {self.prompts['accuracy']:.1%} (held-out phrasings)" if self.prompts else ""
        extra = "".join(f", {e['label']} {e['value']:.3f}" for e in self.extra.values())
        classes = ""
        if self.classes is not None:
            d = self.classes["distribution"]
            classes = (f", classes JS {d['model']['js']:.3f} ({d['floor']['js']:.3f}), worst-covered "
                       f"{d['model']['worst_name']} {d['model']['worst_ratio']:.2f}x its share")
        return (f"N={self.n:,}: FLD {m.fld:.2f} ({fld_ratio(self):.2f}x the floor {f.fld:.2f}){score}, "
                f"P {m.precision:.2f} R {m.recall:.2f}, "
                f"memorization {m.memorization:.1%}{prompts}{extra}{classes}")

    def gate_failures(self, gate: GateSpec) -> list[str]:
        return gate_failures(self, gate)

    def record(self) -> dict[str, Any]:
        """What the run record keeps of it (beside the gate's verdict)."""
        return {"extractor": self.extractor.get("kind"), "model": self.model.to_json(), "floor": self.floor.to_json(),
                "threshold": self.threshold, **({"prompts": self.prompts} if self.prompts else {}),
                **({"extra": self.extra} if self.extra else {}),
                **({"classes": self.classes["distribution"]} if self.classes is not None else {})}

    def report_files(self) -> dict[str, bytes]:
        """Files its report section shows (relative names)."""
        return {f"n{self.n}-closest.png": self.closest_png} if self.closest_png else {}

    def html(self, gate: GateSpec | None, files: dict[str, str]) -> str:
        """Its report section; ``files`` maps :meth:`report_files` names to their place in the report."""
        g = gate or GateSpec()
        rows = [("FLD (Fréchet distance, domain features)", "fld", False, "lower is better"),
                ("classifier score", "score", False, "higher is better, at most the number of classes"),
                ("precision (k-NN manifold)", "precision", False, "share of samples that look real"),
                ("recall (k-NN manifold)", "recall", False, "share of real variety the model covers"),
                ("memorization rate", "memorization", True, "near-copies of training images")]
        body = []
        for label, attr, pct, hint in rows:
            mv, fv = getattr(self.model, attr), getattr(self.floor, attr)

            def fmt(v):
                return "n/a" if v is None else (f"{v:.1%}" if pct else f"{v:.3f}")

            ratio = f"{mv / fv:.2f}×" if mv is not None and fv else ""
            cell = "<br>".join(gate_cell(op, f"{limit:g}× floor" if of_floor
                                         else (f"{limit:.1%}" if pct else f"{limit:g}"), ok)
                               for op, limit, of_floor, ok in gate_checks(self, g, attr))
            body.append(_row(label, hint, fmt(mv), fmt(fv), ratio, cell))
        if self.prompts is not None:
            p, limit = self.prompts, g.min_prompt_accuracy
            cell = "" if limit is None else gate_cell(">=", f"{limit:.1%}", p["accuracy"] >= limit)
            hint = (f"N = {p['n']:,} images from held-out phrasings such as “{p['example'][0]}”, labelled by the "
                    f"domain classifier; the text encoder alone resolves {p['encoder_accuracy']:.1%}")
            body.append(_row("prompt-conditioned accuracy", hint, f"{p['accuracy']:.1%}", "", "", cell))
        for e in self.extra.values():
            limit = getattr(g, e["gate"]) if e.get("gate") else None
            cell = "" if limit is None else gate_cell("<=", f"{limit:g}", passes(e["value"], limit, "<="))
            body.append(_row(e["label"], e.get("note", ""), f"{e['value']:.3f}", "", "", cell))
        ex = self.extractor
        quality = (f"held-out accuracy {ex['heldout_accuracy']:.1%}" if ex.get("heldout_accuracy") is not None
                   else f"held-out reconstruction MSE {ex.get('heldout_mse')}") + _judged_on(ex)
        held = (f"held-out real images drawn from the test split {self.data.get('test_source')} "
                f"({self.data.get('test_count', 0):,} images)" if self.data.get("split") == "test"
                else "held-out real images")
        caption = (f"N = {self.n:,} generated samples and N = {self.data.get('heldout', self.n):,} {held}, "
                   f"each against {self.data.get('reference', 0):,} reference images of "
                   f"{self.data.get('source', '?')}; "
                   f"{ex.get('kind', '?')} features ({quality}); seed {self.settings.get('seed')}, "
                   f"k = {self.settings.get('k')}; computed {self.created_at}")
        out = [f"<h3>N = {self.n:,}</h3><p>{esc(caption)}</p><table><tr><th>metric</th><th>model</th>"
               f"<th>floor (real vs real)</th><th>model / floor</th><th>gate</th></tr>{''.join(body)}</table>"
               f"<p class='note'>Memorization: a sample counts as a near-copy when its nearest training image in "
               f"pixel space is closer than {self.threshold:.4f} (RMS per pixel, pixels in [0, 1]): the "
               f"{self.settings.get('memorization_quantile')} quantile of real images' distances to their nearest "
               f"other training image. The floor row counts held-out real images that close to a reference image.</p>"]
        if self.classes is not None:
            out.append(classes_html(self.classes))
        closest = files.get(f"n{self.n}-closest.png")
        if closest:
            out.append(f"<figure><img class='px' src='{src(closest)}' alt='closest pairs, N={self.n}' "
                       f"style='height:160px'><figcaption class='note'>The {len(self.copies)} generated samples "
                       "closest to a training image (top) and those training images (bottom).</figcaption></figure>")
        return "".join(out)

    def lines(self, gate: GateSpec | None = None) -> list[str]:
        """The metrics table, model beside floor, with the gate's thresholds."""
        g = gate or GateSpec()
        kind = self.extractor.get("kind", "?")
        held = (f"from the test split {self.data.get('test_source')}" if self.data.get("split") == "test"
                else "held-out real images")
        acc = self.extractor.get("heldout_accuracy")
        acc = f" (held-out accuracy {acc:.1%}{_judged_on(self.extractor)})" if acc is not None else ""
        out = [f"evaluate {self.model_uri}",
               f"  N={self.n:,} generated vs {self.data.get('reference', 0):,} reference images; floor: "
               f"{self.data.get('heldout', 0):,} {held}; {kind} features{acc}; seed "
               f"{self.settings.get('seed')}",
               f"  {'metric':<13} {'model':>9} {'floor':>9} {'model/floor':>12}  gate"]

        def fmt(v: float | None, pct: bool) -> str:
            return "n/a" if v is None else (f"{v:.1%}" if pct else f"{v:.3f}")

        rows = [("FLD", "fld", False), ("score", "score", False), ("precision", "precision", False),
                ("recall", "recall", False), ("memorization", "memorization", True)]
        for label, attr, pct in rows:
            mv, fv = getattr(self.model, attr), getattr(self.floor, attr)
            ratio = f"{mv / fv:.2f}x" if mv is not None and fv else ""
            gate_txt = "; ".join(f"{op} {limit:g}{'x floor' if of_floor else ''}  {'ok' if ok else 'FAILED'}"
                                 for op, limit, of_floor, ok in gate_checks(self, g, attr))
            out.append(f"  {label:<13} {fmt(mv, pct):>9} {fmt(fv, pct):>9} {ratio:>12}  {gate_txt}".rstrip())
        if self.prompts is not None:
            p = self.prompts
            gate_txt = "" if g.min_prompt_accuracy is None else (
                f"  >= {g.min_prompt_accuracy:.1%}  "
                + ("ok" if passes(p["accuracy"], g.min_prompt_accuracy, ">=") else "FAILED"))
            out.append(f"  {'prompt acc.':<13} {p['accuracy']:>9.1%} {'':>9} {'':>12}{gate_txt}".rstrip())
            out.append(f"  prompt accuracy: N={p['n']:,} images from {p['phrasings']} phrasings (e.g. "
                       f"\"{p['example'][min(7, len(p['example']) - 1)]}\"), labelled by the domain classifier; "
                       f"the text encoder alone resolves {p['encoder_accuracy']:.1%} of them")
        for e in self.extra.values():
            limit = getattr(g, e["gate"]) if e.get("gate") else None
            gate_txt = "" if limit is None else (
                f"  <= {limit:g}  " + ("ok" if passes(e["value"], limit, "<=") else "FAILED"))
            out.append(f"  {e['label'][:13]:<13} {e['value']:>9.3f} {'':>9} {'':>12}{gate_txt}".rstrip())
            if e.get("note"):
                out.append(f"  {e['label']}: {e['note']}")
        out.append(f"  memorization: nearest training image in pixel space closer than {self.threshold:.4f} RMS "
                   f"(the {self.settings['memorization_quantile']:g} quantile of real images' own NN distances)")
        if self.classes is not None:
            out += class_lines(self.classes)
        return out


def _judged_on(extractor: dict[str, Any]) -> str:
    return (f" on the {extractor.get('heldout_count', 0):,}-image test split"
            if extractor.get("heldout_on") == "test split" else "")


def _fmt(v: float | None, pct: bool = False) -> str:
    return "n/a" if v is None else (f"{v:.1%}" if pct else f"{v:.3f}")


def _worst(rows: list[dict[str, Any]], which: str, attr: str) -> dict[str, Any] | None:
    """The class with the lowest ``attr`` in the ``which`` row (None when no class has a value)."""
    have = [r for r in rows if r[which].get(attr) is not None]
    return min(have, key=lambda r: (r[which][attr], r["label"])) if have else None


def class_lines(classes: dict[str, Any]) -> list[str]:
    """The per-class figures, compactly: the class distribution's divergence and worst-covered class, and the
    classes with the lowest precision and recall, each beside the floor's."""
    d, rows = classes["distribution"], classes["rows"]
    m, f = d["model"], d["floor"]
    out = [f"  classes: JS divergence {m['js']:.3f} (floor {f['js']:.3f}), total variation {m['tv']:.3f} "
           f"(floor {f['tv']:.3f}); worst-covered {m['worst_name']}: {m['worst_ratio']:.2f}x its real share "
           f"(floor: {f['worst_name']} {f['worst_ratio']:.2f}x)"]
    worst = []
    for attr in ("precision", "recall"):
        r = _worst(rows, "model", attr)
        if r is not None:
            worst.append(f"lowest {attr} {r['name']} {r['model'][attr]:.3f} (floor {_fmt(r['floor'][attr])})")
    mem = max(rows, key=lambda r: (r["model"]["memorization"] or 0.0, -r["label"]))
    worst.append(f"most memorized {mem['name']} {_fmt(mem['model']['memorization'], True)}")
    out.append(f"  per class (samples grouped by {classes['grouped_by']}): " + "; ".join(worst))
    return out


def classes_html(classes: dict[str, Any]) -> str:
    """The per-class table of the report: shares, precision, recall and memorization, each beside the floor."""
    d = classes["distribution"]
    m, f = d["model"], d["floor"]
    body = []
    for r in classes["rows"]:
        mo, fl = r["model"], r["floor"]
        ratio = f"{mo['share'] / r['real_share']:.2f}×" if r["real_share"] else ""
        worst = " class='worst'" if r["label"] == m["worst"] else ""
        cells = [r["name"], f"{r['real_share']:.1%}", f"{mo['share']:.1%} ({fl['share']:.1%})", ratio,
                 f"{mo['count']:,} ({fl['count']:,})",
                 *(f"{_fmt(mo[a], a == 'memorization')} ({_fmt(fl[a], a == 'memorization')})"
                   for a in ("precision", "recall", "memorization"))]
        body.append(f"<tr{worst}><td>{esc(cells[0])}</td>" + "".join(f"<td class='num'>{esc(c)}</td>"
                                                                   for c in cells[1:]) + "</tr>")
    note = (f"Per class, each figure beside the floor's (held-out real images, in parentheses). Generated samples "
            f"are grouped by the {classes['grouped_by']}; held-out images by their label; precision and recall "
            f"against the class's own reference images (k = {classes['k']} manifolds). Shares: the domain "
            f"classifier's predictions on each set; real share: the held-out labels. Class distribution: "
            f"Jensen–Shannon divergence {m['js']:.3f} bits (floor {f['js']:.3f}), total variation {m['tv']:.3f} "
            f"(floor {f['tv']:.3f}); worst-covered class {m['worst_name']} at {m['worst_ratio']:.2f}× its real "
            f"share (floor: {f['worst_name']} at {f['worst_ratio']:.2f}×).")
    return ("<h4>Per class</h4><table class='classes'><tr><th>class</th><th>real share</th>"
            "<th>generated share (floor)</th><th>generated / real</th><th>samples (floor)</th>"
            "<th>precision (floor)</th><th>recall (floor)</th><th>memorization (floor)</th></tr>"
            f"{''.join(body)}</table><p class='note'>{esc(note)}</p>")


def _row(label: str, hint: str, model: str, floor: str, ratio: str, cell: str) -> str:
    return (f"<tr><td>{esc(label)}<div class='note'>{esc(hint)}</div></td><td class='num'>{esc(model)}</td>"
            f"<td class='num'>{esc(floor)}</td><td class='num'>{esc(ratio)}</td><td>{cell}</td></tr>")


def fld_ratio(result: EvalResult) -> float:
    """The model's FLD over the floor's, NaN when either is missing or the floor is 0."""
    m, f = result.model.fld, result.floor.fld
    return m / f if m is not None and f else math.nan


def gate_checks(result: EvalResult, gate: GateSpec, attr: str) -> list[tuple[str, float, bool, bool]]:
    """The gate's thresholds on one metric row (``fld``, ``score``, ``memorization``), as
    ``(op, limit, of_floor, passed)``; ``of_floor``: the limit is a multiple of the floor's value."""
    limits = {"fld": [("<=", gate.max_fld, False), ("<=", gate.max_fld_ratio, True)],
              "score": [(">=", gate.min_score, False)],
              "memorization": [("<=", gate.max_memorization, False)]}.get(attr, [])
    value = getattr(result.model, attr)
    return [(op, limit, of_floor, passes(fld_ratio(result) if of_floor else value, limit, op))
            for op, limit, of_floor in limits if limit is not None]


def passes(value: float | None, limit: float, op: str) -> bool:
    if value is None or math.isnan(value):
        return False
    return value <= limit if op == "<=" else value >= limit


def gate_failures(result: EvalResult, gate: GateSpec) -> list[str]:
    """One phrase per failed threshold; empty when the gate passes (or sets no thresholds)."""
    m, f = result.model, result.floor
    out = []
    if gate.max_fld is not None and not passes(m.fld, gate.max_fld, "<="):
        out.append(f"FLD {m.fld:.2f} > evaluate.gate.max_fld {gate.max_fld:g} (real-vs-real floor {f.fld:.2f})")
    if gate.max_fld_ratio is not None and not passes(fld_ratio(result), gate.max_fld_ratio, "<="):
        out.append(f"FLD {m.fld:.2f} is {fld_ratio(result):.2f}x the real-vs-real floor {f.fld:.2f} > "
                   f"evaluate.gate.max_fld_ratio {gate.max_fld_ratio:g}")
    if gate.min_score is not None and not passes(m.score, gate.min_score, ">="):
        out.append(f"classifier score {m.score:.2f} < evaluate.gate.min_score {gate.min_score:g} (floor {f.score:.2f})")
    if gate.max_memorization is not None and not passes(m.memorization, gate.max_memorization, "<="):
        out.append(f"memorization {m.memorization:.1%} of samples are near-copies of training images > "
                   f"evaluate.gate.max_memorization {gate.max_memorization:.1%}")
    p = result.prompts
    if gate.min_prompt_accuracy is not None and (p is None
                                                 or not passes(p["accuracy"], gate.min_prompt_accuracy, ">=")):
        out.append("no prompt accuracy (the model has no text encoder, or the data no labels)" if p is None else
                   f"prompt accuracy {p['accuracy']:.1%} < evaluate.gate.min_prompt_accuracy "
                   f"{gate.min_prompt_accuracy:.1%}")
    for e in result.extra.values():
        limit = getattr(gate, e["gate"]) if e.get("gate") else None
        if limit is not None and not passes(e["value"], limit, "<="):
            out.append(f"{e['label']} {e['value']:.3f} > evaluate.gate.{e['gate']} {limit:g}")
    return out
