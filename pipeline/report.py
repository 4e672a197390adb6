"""A static HTML report of a model package or a generated batch, readable in any browser offline.

    aigc report outputs/generated/demo/2026-11-28        # → outputs/generated/demo/2026-11-28.report/index.html
    aigc report outputs/models/demo/<version> --out /tmp/demo-report

It holds

* the model: job, version, sha256, data, epochs;
* the quality metrics of every evaluation stored beside the package (``<package>.eval/n<N>.json``,
  see :mod:`pipeline.evaluate`), the model's figure beside the real-vs-real floor, with the gate's
  thresholds when a spec names them, and the generated samples closest to a training image;
* training curves (losses, discriminator outputs per epoch) drawn as PNG line plots with PIL (no
  matplotlib needed), from the metrics history in ``model.json``;
* the sample grid of every epoch, from the training run's ``samples/`` folder;
* for a generated batch: a paged gallery (``gallery/page-0001.html``, ...) of the assets, each with
  its provenance (item id, seed, label, prompt, sha256, model, job, time, IPTC source type) from the
  Parquet columns, or from the PNG text chunks when the batch has no Parquet.

Every file the HTML references is written into the report folder and referenced relatively, so
the folder can be copied or served anywhere. The default folder is a sibling of the URI
(``<URI>.report``), never inside it: a published output stays exactly what its manifest lists.
A small script on each page counts images that failed to load and says so at the top.
"""

from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

from pipeline.errors import PipelineError
from pipeline.evaluate import EvalResult, closest_name, eval_uri, gate_checks, read_results
from pipeline.specs import GateSpec, StorageSpec
from pipeline.storage import MANIFEST, Store, StorageError, is_published, resolve_recorded

REPORT_SUFFIX = ".report"
PAGE_SIZE = 100
MAX_ITEMS = 1000
GALLERY_DIR = "gallery"
PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]
PROVENANCE_KEYS = ["item_id", "seed", "label", "prompt", "png_sha256", "model_sha256", "job", "created_at",
                   "width", "height", "DigitalSourceType"]


# --------------------------------------------------------------------------------------------- inputs
@dataclass
class Asset:
    """One generated asset: its PNG and its provenance."""

    item_id: str
    png: bytes
    meta: dict[str, Any]


@dataclass
class ReportInputs:
    """Everything a report shows, read from storage."""

    uri: str
    kind: str  # "model" | "generate"
    model_uri: str
    model_meta: dict[str, Any]
    manifest: dict[str, Any]
    evals: list[EvalResult] = field(default_factory=list)
    closest: dict[int, bytes] = field(default_factory=dict)  # N → closest-pairs PNG
    grids: list[tuple[int, bytes]] = field(default_factory=list)  # (epoch, PNG)
    grids_note: str = ""
    assets: list[Asset] = field(default_factory=list)
    assets_total: int = 0
    gate: GateSpec | None = None


def _read_manifest(store: Store) -> dict[str, Any]:
    if not is_published(store):
        raise PipelineError(f"{store.uri}: nothing published here (no manifest.json/_SUCCESS); "
                            "give a generated output or a model package")
    manifest = store.read_json(MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("kind") not in ("model", "generate"):
        raise PipelineError(f"{store.uri}: not a generated output or a model package "
                            f"(manifest kind {manifest.get('kind') if isinstance(manifest, dict) else '?'!r})")
    return manifest


def _epoch_grids(run_uri: str, storage: StorageSpec | None) -> tuple[list[tuple[int, bytes]], str]:
    """Every epoch's sample grid from ``<run>/samples/epoch_NNNN.png``, with a note when there are none."""
    if not run_uri:
        return [], "the model package names no training run"
    try:
        store = Store(run_uri, storage)
        grids = []
        for rel in store.list("samples"):
            name = rel.rsplit("/", 1)[-1]
            if name.startswith("epoch_") and name.endswith(".png") and name[6:-4].isdigit():
                grids.append((int(name[6:-4]), store.read(rel)))
    except StorageError as exc:
        return [], f"cannot read the training run's sample grids ({exc})"
    return sorted(grids), ("" if grids else f"no sample grids at {run_uri}/samples")


def _parquet_rows(store: Store, rel: str) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    if store.local:  # by path: reading from BytesIO can abort pyarrow at exit (DESIGN §4)
        table = pq.read_table(store.path(rel), use_threads=False)
    else:
        table = pq.read_table(io.BytesIO(store.read(rel)), use_threads=False)
    return table.to_pylist()


def _assets_from_parquet(store: Store, files: list[str], limit: int) -> list[Asset]:
    out: list[Asset] = []
    for rel in files:
        for row in sorted(_parquet_rows(store, rel), key=lambda r: r["item_id"]):
            image = row.pop("image", None) or {}  # text outputs have no image: their card shows the text
            meta = {k: v for k, v in row.items() if v is not None}
            meta["DigitalSourceType"] = "trainedAlgorithmicMedia"  # every row of an aigc Parquet carries it
            out.append(Asset(str(row["item_id"]), image.get("bytes") or b"", meta))
            if len(out) >= limit:
                return out
    return out


def _assets_from_pngs(store: Store, files: list[str], limit: int) -> list[Asset]:
    from PIL import Image

    out = []
    for rel in files[:limit]:
        data = store.read(rel)
        with Image.open(io.BytesIO(data)) as im:
            text = dict(getattr(im, "text", {}) or {})
            size = im.size
        meta = {k.removeprefix("aigc:"): v for k, v in text.items()}
        meta.update(width=size[0], height=size[1])
        meta["DigitalSourceType"] = meta.get("DigitalSourceType", "").rsplit("/", 1)[-1]
        out.append(Asset(meta.get("item_id") or rel.rsplit("/", 1)[-1][:-4], data, meta))
    return out


def _assets(store: Store, manifest: dict[str, Any], limit: int) -> tuple[list[Asset], int]:
    files = store.list()
    total = int(manifest.get("counts", {}).get("items", 0))
    parquet = sorted(f for f in files if f.startswith("data/") and f.endswith(".parquet"))
    if parquet:
        return _assets_from_parquet(store, parquet, limit), total
    pngs = sorted((f for f in files if f.startswith("images/") and f.endswith(".png")),
                  key=lambda f: f.rsplit("/", 1)[-1])
    return _assets_from_pngs(store, pngs, limit), total or len(pngs)


def _gate_from_spec(spec: Any) -> GateSpec | None:
    try:
        gate = (spec or {}).get("evaluate", {}).get("gate")
        return GateSpec.model_validate(gate) if gate else None
    except Exception:  # noqa: BLE001 - an old or hand-edited manifest: just no thresholds
        return None


def collect(uri: str, storage: StorageSpec | None = None, *, max_items: int = MAX_ITEMS,
            gate: GateSpec | None = None) -> ReportInputs:
    """Read everything the report of ``uri`` (a generated output or a model package) shows."""
    store = Store(uri, storage)
    manifest = _read_manifest(store)
    if manifest["kind"] == "generate":
        model_uri = manifest.get("model_uri") or ""
        if not model_uri:
            raise PipelineError(f"{store.uri}/{MANIFEST}: names no model_uri; cannot find the model")
        model_uri = resolve_recorded(model_uri, store.uri)
    else:
        model_uri = store.uri
    model_store = Store(model_uri, storage)
    try:
        model_meta = model_store.read_json("model.json")
    except StorageError as exc:
        raise PipelineError(f"{model_uri}: cannot read the model package's model.json ({exc})") from None
    inputs = ReportInputs(uri=store.uri, kind=manifest["kind"], model_uri=model_store.uri, model_meta=model_meta,
                          manifest=manifest, gate=gate or _gate_from_spec(manifest.get("spec")))
    inputs.evals = read_results(model_store.uri, storage)
    ev = Store(eval_uri(model_store.uri), storage)
    for r in inputs.evals:
        if ev.exists(closest_name(r.n)):
            inputs.closest[r.n] = ev.read(closest_name(r.n))
    run_uri = str(model_meta.get("run") or "")
    inputs.grids, inputs.grids_note = _epoch_grids(resolve_recorded(run_uri, model_store.uri) if run_uri else "",
                                                   storage)
    if inputs.kind == "generate":
        inputs.assets, inputs.assets_total = _assets(store, manifest, max_items)
    return inputs


# --------------------------------------------------------------------------------------------- plots
def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks, t = [], start
    while t <= hi + step * 0.5:
        ticks.append(round(t, 10))
        t += step
    return ticks


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def line_plot(series: dict[str, list[float]], *, title: str, xlabel: str = "epoch", x0: int = 1,
              size: tuple[int, int] = (640, 360)) -> bytes:
    """A PNG line plot of ``series`` (name → values at x = x0, x0+1, ...), with axes, ticks and a legend."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 64, 20, 40, 48
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font, small = _font(15), _font(12)
    values = [v for vals in series.values() for v in vals if v is not None and math.isfinite(v)]
    n = max((len(v) for v in series.values()), default=0)
    d.text((left, 10), title, fill="black", font=font)
    if not values or n == 0:
        d.text((left, h // 2), "no data", fill="gray", font=font)
        return _png(img)
    yt = _nice_ticks(min(values), max(values))
    ylo, yhi = yt[0], yt[-1]
    xlo, xhi = x0, x0 + max(n - 1, 1)

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - xlo) / (xhi - xlo) * (w - left - right),
                h - bottom - (y - ylo) / ((yhi - ylo) or 1) * (h - top - bottom))

    for t in yt:  # horizontal grid and y labels
        _, y = px(xlo, t)
        d.line([(left, y), (w - right, y)], fill=(225, 225, 225))
        label = f"{t:g}"
        d.text((left - 8 - d.textlength(label, font=small), y - 7), label, fill="black", font=small)
    step = max(1, math.ceil(n / 10))
    for i in range(0, n, step):  # x ticks
        x, _ = px(x0 + i, ylo)
        d.line([(x, h - bottom), (x, h - bottom + 4)], fill="black")
        label = str(x0 + i)
        d.text((x - d.textlength(label, font=small) / 2, h - bottom + 6), label, fill="black", font=small)
    d.line([(left, top), (left, h - bottom), (w - right, h - bottom)], fill="black")
    d.text(((w - d.textlength(xlabel, font=small)) / 2, h - 20), xlabel, fill="black", font=small)
    lx = w - right - 10
    for k, (name, vals) in enumerate(series.items()):
        color = PALETTE[k % len(PALETTE)]
        pts = [px(x0 + i, v) for i, v in enumerate(vals) if v is not None and math.isfinite(v)]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        for x, y in pts:
            d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=color)
        tw = d.textlength(name, font=small)  # legend, top right
        ly = top + 4 + 16 * k
        d.line([(lx - tw - 28, ly + 7), (lx - tw - 8, ly + 7)], fill=color, width=3)
        d.text((lx - tw, ly), name, fill="black", font=small)
    return _png(img)


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def training_curves(history: list[dict[str, Any]]) -> dict[str, bytes]:
    """File name → PNG for the losses and the discriminator outputs per epoch."""
    def col(key: str) -> list[float]:
        return [float(h[key]) if isinstance(h.get(key), (int, float)) else float("nan") for h in history]

    if any("perplexity" in h for h in history):  # a text model
        return {
            "loss.png": line_plot({"training loss": col("loss"), "held-out loss": col("heldout_loss")},
                                  title="Cross-entropy per byte (nats) per epoch"),
            "perplexity.png": line_plot({"model": col("perplexity"), "unigram baseline": col("unigram_perplexity")},
                                        title="Held-out perplexity per byte: model vs unigram baseline"),
        }

    return {
        "loss.png": line_plot({"loss_D": col("loss_D"), "loss_G": col("loss_G")}, title="Losses per epoch"),
        "discriminator.png": line_plot({"D(x)": col("D(x)"), "D(G(z))": col("D(G(z))")},
                                       title="Discriminator output on real (D(x)) and generated (D(G(z))) images"),
    }


# --------------------------------------------------------------------------------------------- html
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#16794a;font-weight:600}.bad{color:#b3261e;font-weight:600}.note{color:#666;font-size:.9rem}
img.px{image-rendering:pixelated}.grids{display:flex;flex-wrap:wrap;gap:1rem}.grids figure{margin:0}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:.8rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.5rem;font-size:.75rem;overflow-wrap:anywhere}
.card img{width:96px;height:96px;display:block;margin:0 auto .4rem}.card table{width:100%;margin:0}
.card td{border:none;padding:1px 3px}.card td.k{color:#666;white-space:nowrap}.nav a,.nav span{margin-right:.5rem}
#broken{background:#fde7e9;color:#b3261e;padding:.5rem 1rem;border-radius:4px}
code{background:#f4f4f4;padding:0 .25rem;border-radius:3px}
"""

CHECK_IMAGES = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  document.documentElement.setAttribute("data-images", String(imgs.length));
  document.documentElement.setAttribute("data-images-broken", String(bad.length));
  if (bad.length) {
    var p = document.getElementById("broken");
    p.hidden = false;
    p.textContent = bad.length + " of " + imgs.length + " images failed to load: " +
      bad.map(function (i) { return i.getAttribute("src"); }).slice(0, 5).join(", ");
  }
});
</script>"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def src(path: str) -> str:
    """A relative URL for a file in the report (every segment percent-encoded)."""
    return esc("/".join(quote(p) for p in path.split("/")))


def page(title: str, body: list[str]) -> str:
    return "\n".join(["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
                      '<meta name="viewport" content="width=device-width, initial-scale=1">',
                      f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
                      '<p id="broken" hidden></p>', *body, CHECK_IMAGES, "</body></html>", ""])


def _kv_table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows if v not in (None, ""))
    return f"<table>{cells}</table>"


def _text_metrics_table(r: Any, gate: GateSpec | None) -> str:
    """A text model's held-out perplexity beside the unigram baseline (pipeline.evaluate_text)."""
    limit = (gate or GateSpec()).max_perplexity
    gate_cell = ""
    if limit is not None:
        ok = r.model.perplexity <= limit
        gate_cell = f'≤ {limit:g} <span class="{"ok" if ok else "bad"}">{"pass" if ok else "FAIL"}</span>'
    rows = [("perplexity per byte", f"{r.model.perplexity:.3f}", f"{r.baseline.perplexity:.3f}", f"{r.ratio:.2f}×", gate_cell),
            ("bits per byte", f"{r.model.bits_per_byte:.3f}", f"{r.baseline.bits_per_byte:.3f}",
             f"{r.model.bits_per_byte / r.baseline.bits_per_byte:.2f}×", "")]
    body = "".join(f"<tr><td>{esc(a)}</td><td class='num'>{esc(b)}</td><td class='num'>{esc(c)}</td>"
                   f"<td class='num'>{esc(d)}</td><td>{e}</td></tr>" for a, b, c, d, e in rows)
    d = r.data
    caption = (f"{r.n:,} held-out bytes ({d.get('segments', 0)} segments, a {d.get('heldout', 0):g} share of "
               f"{d.get('uri', '?')}); the unigram baseline is the byte frequencies of the "
               f"{d.get('train_tokens', 0):,} training bytes, scored on the same bytes; computed {r.created_at}")
    if not d.get("same_as_training", True):
        caption += "; NOT the corpus this model was trained on"
    return (f"<p>{esc(caption)}</p><table><tr><th>metric</th><th>model</th><th>unigram baseline</th>"
            f"<th>model / baseline</th><th>gate</th></tr>{body}</table>")


def _metrics_table(r: EvalResult, gate: GateSpec | None) -> str:
    if getattr(r, "kind", "image") == "text":
        return _text_metrics_table(r, gate)
    g = gate or GateSpec()
    rows = [("FLD (Fréchet distance, domain features)", "fld", False, "lower is better"),
            ("classifier score", "score", False, "higher is better, at most the number of classes"),
            ("precision (k-NN manifold)", "precision", False, "share of samples that look real"),
            ("recall (k-NN manifold)", "recall", False, "share of real variety the model covers"),
            ("memorization rate", "memorization", True, "near-copies of training images")]
    body = []
    for label, attr, pct, hint in rows:
        mv, fv = getattr(r.model, attr), getattr(r.floor, attr)
        fmt = (lambda v: "n/a" if v is None else (f"{v:.1%}" if pct else f"{v:.3f}"))
        ratio = f"{mv / fv:.2f}×" if mv is not None and fv else ""
        gate_cell = "<br>".join(
            f'{"≤" if op == "<=" else "≥"} '
            + esc(f"{limit:g}× floor" if of_floor else (f"{limit:.1%}" if pct else f"{limit:g}"))
            + f' <span class="{"ok" if ok else "bad"}">{"pass" if ok else "FAIL"}</span>'
            for op, limit, of_floor, ok in gate_checks(r, g, attr))
        body.append(f"<tr><td>{esc(label)}<div class='note'>{esc(hint)}</div></td><td class='num'>{esc(fmt(mv))}</td>"
                    f"<td class='num'>{esc(fmt(fv))}</td><td class='num'>{esc(ratio)}</td><td>{gate_cell}</td></tr>")
    if r.prompts is not None:
        p, limit = r.prompts, g.min_prompt_accuracy
        gate_cell = "" if limit is None else (
            f'≥ {limit:.1%} <span class="{"ok" if p["accuracy"] >= limit else "bad"}">'
            f'{"pass" if p["accuracy"] >= limit else "FAIL"}</span>')
        hint = (f"N = {p['n']:,} images from held-out phrasings such as “{p['example'][0]}”, labelled by the domain "
                f"classifier; the text encoder alone resolves {p['encoder_accuracy']:.1%}")
        body.append(f"<tr><td>prompt-conditioned accuracy<div class='note'>{esc(hint)}</div></td>"
                    f"<td class='num'>{p['accuracy']:.1%}</td><td></td><td></td><td>{gate_cell}</td></tr>")
    ex = r.extractor
    quality = (f"held-out accuracy {ex['heldout_accuracy']:.1%}" if ex.get("heldout_accuracy") is not None
               else f"held-out reconstruction MSE {ex.get('heldout_mse')}")
    caption = (f"N = {r.n:,} generated samples and N = {r.data.get('heldout', r.n):,} held-out real images, each "
               f"against {r.data.get('reference', 0):,} reference images of {r.data.get('source', '?')}; "
               f"{ex.get('kind', '?')} features ({quality}); seed {r.settings.get('seed')}, "
               f"k = {r.settings.get('k')}; computed {r.created_at}")
    return (f"<p>{esc(caption)}</p><table><tr><th>metric</th><th>model</th><th>floor (real vs real)</th>"
            f"<th>model / floor</th><th>gate</th></tr>{''.join(body)}</table>"
            f"<p class='note'>Memorization: a sample counts as a near-copy when its nearest training image in pixel "
            f"space is closer than {r.threshold:.4f} (RMS per pixel, pixels in [0, 1]): the "
            f"{r.settings.get('memorization_quantile')} quantile of real images' distances to their nearest other "
            f"training image. The floor row counts held-out real images that close to a reference image.</p>")


def _index_html(inp: ReportInputs, curves: dict[str, str], grids: list[tuple[int, str]], closest: dict[int, str],
                pages: int) -> str:
    meta, man = inp.model_meta, inp.manifest
    data = meta.get("data") or {}
    title = f"aigc report: {meta.get('job') or man.get('job') or 'model'}"
    body = [f"<h1>{esc(title)}</h1>", f"<p class='note'>{esc(inp.uri)}</p>", "<h2>Overview</h2>"]
    rows: list[tuple[str, Any]] = [("model package", inp.model_uri), ("model sha256", meta.get("model_sha256")),
                                   ("version", meta.get("version")), ("epochs trained", meta.get("epochs")),
                                   ("training data", f"{data.get('uri') or data.get('source', '?')}, "
                                                     f"{data.get('count', '?')} "
                                                     f"{'bytes' if data.get('source') == 'text' else 'images'}"
                                    if data else "")]
    if inp.kind == "generate":
        c = man.get("counts", {})
        rows += [("generated output", inp.uri), ("created", man.get("created_at")),
                 ("items", f"{c.get('items', 0):,} ({c.get('seed_items', 0):,} from seeds, "
                           f"{c.get('prompt_items', 0):,} from prompts; {c.get('rejected', 0)} prompts rejected)"),
                 ("files / bytes", f"{c.get('files', 0):,} / {c.get('bytes', 0):,}")]
    body.append(_kv_table(rows))

    body.append("<h2>Quality metrics</h2>")
    if not inp.evals:
        body.append(f"<p>No evaluation stored beside this model yet: run <code>aigc evaluate {esc(inp.model_uri)}</code>.</p>")
    for r in inp.evals:
        head = "Held-out perplexity" if getattr(r, "kind", "image") == "text" else f"N = {r.n:,}"
        body.append(f"<h3>{head}</h3>" + _metrics_table(r, inp.gate))
        if r.n in closest:
            body.append(f"<figure><img class='px' src='{src(closest[r.n])}' alt='closest pairs, N={r.n}' "
                        f"style='height:160px'><figcaption class='note'>The {len(r.copies)} generated samples closest "
                        "to a training image (top) and those training images (bottom).</figcaption></figure>")

    body.append("<h2>Training curves</h2>")
    if curves:
        body += [f"<img src='{src(p)}' alt='{esc(name)}' width='640' height='360'>" for name, p in curves.items()]
    else:
        body.append("<p>The model package holds no training history.</p>")

    body.append("<h2>Sample grids per epoch</h2><p class='note'>The same latents and labels every epoch.</p>")
    if grids:
        body.append("<div class='grids'>" + "".join(
            f"<figure><img class='px' src='{src(p)}' alt='epoch {e + 1}' width='274' height='274'>"
            f"<figcaption>epoch {e + 1}</figcaption></figure>" for e, p in grids) + "</div>")
    else:
        body.append(f"<p>{esc(inp.grids_note)}</p>")

    body.append("<h2>Gallery</h2>")
    if inp.kind != "generate":
        body.append("<p>This is a model package; run <code>aigc report</code> on a generated output for its gallery.</p>")
    elif not inp.assets:
        body.append("<p>The output holds no assets.</p>")
    else:
        shown = len(inp.assets)
        body.append(f"<p>{shown:,} of {inp.assets_total:,} assets (by item id), {pages} page(s): "
                    + " ".join(f"<a href='{src(_page_name(i))}'>{i}</a>" for i in range(1, pages + 1)) + "</p>")
    return page(title, body)


def _page_name(i: int) -> str:
    return f"{GALLERY_DIR}/page-{i:04d}.html"


def _cell(key: str, value: Any) -> str:
    text = str(value)
    if key.endswith("sha256") and len(text) > 16:  # the full hash on hover
        return f"<td title='{esc(text)}'>{esc(text[:16])}…</td>"
    return f"<td>{esc(text)}</td>"


def _card(a: Asset, img_rel: str) -> str:
    if not a.png and "completion_tokens" in a.meta:  # a text completion (pipeline.complete)
        keys = ["item_id", "seed", "stop_reason", "rejected", "completion_tokens", "model_sha256", "job", "created_at"]
        rows = "".join(f"<tr><td class='k'>{esc(k)}</td>{_cell(k, a.meta[k])}</tr>" for k in keys
                       if a.meta.get(k) not in (None, ""))
        text = a.meta.get("completion")
        shown = (f"<b>{esc(a.meta.get('prompt', ''))}</b>{esc(text)}" if text is not None
                 else f"<b>{esc(a.meta.get('prompt', ''))}</b> <i>(completion rejected)</i>")
        return f"<div class='card'><pre style='white-space:pre-wrap'>{shown}</pre><table>{rows}</table></div>"
    rows = "".join(f"<tr><td class='k'>{esc(k)}</td>{_cell(k, a.meta[k])}</tr>" for k in PROVENANCE_KEYS
                   if k in a.meta and a.meta[k] not in (None, ""))
    return (f"<div class='card'><img class='px' src='{src(img_rel)}' alt='{esc(a.item_id)}' width='96' height='96'>"
            f"<table>{rows}</table></div>")


def _gallery_html(inp: ReportInputs, assets: list[Asset], num: int, pages: int) -> str:
    def link(i: int, text: str) -> str:
        return f"<a href='{src(f'page-{i:04d}.html')}'>{esc(text)}</a>"

    nav = ["<p class='nav'><a href='../index.html'>report</a>"]
    if num > 1:
        nav.append(link(num - 1, "← previous"))
    nav += [f"<span>{i}</span>" if i == num else link(i, str(i)) for i in range(1, pages + 1)]
    if num < pages:
        nav.append(link(num + 1, "next →"))
    nav.append("</p>")
    cards = "".join(_card(a, f"img/{a.item_id}.png") for a in assets)
    title = f"gallery {num}/{pages}: {inp.manifest.get('job', '')}"
    return page(title, [f"<h1>{esc(title)}</h1>", "".join(nav), f"<div class='gallery'>{cards}</div>", "".join(nav)])


# --------------------------------------------------------------------------------------------- entry
@dataclass
class ReportResult:
    index: str  # URI of index.html
    out: str
    pages: int
    assets: int
    assets_total: int
    evals: int
    grids: int
    files: int


def default_out(uri: str) -> str:
    return uri.rstrip("/") + REPORT_SUFFIX


def _safe_name(item_id: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in item_id).strip(".")
    return keep or "item"


def build_report(uri: str, out: str | None = None, *, storage: StorageSpec | None = None,
                 page_size: int = PAGE_SIZE, max_items: int = MAX_ITEMS, gate: GateSpec | None = None,
                 log: Callable[[str], None] = print) -> ReportResult:
    """Write the HTML report of ``uri`` into ``out`` (default ``<uri>.report``); returns where it went."""
    if page_size <= 0:
        raise PipelineError(f"--page-size: must be greater than 0, got {page_size}")
    if max_items < 0:
        raise PipelineError(f"--max-items: must be 0 or more, got {max_items}")
    inp = collect(uri, storage, max_items=max_items, gate=gate)
    out_uri = (out or default_out(inp.uri)).rstrip("/")
    if out_uri == inp.uri or out_uri.startswith(inp.uri + "/"):
        raise PipelineError(f"--out: {out_uri} is inside {inp.uri}; a report must not change a published output")
    files: dict[str, bytes] = {}
    curves = {}
    history = inp.model_meta.get("metrics") or []
    for name, png in (training_curves(history) if history else {}).items():
        files[f"assets/{name}"] = png
        curves[name] = f"assets/{name}"
    grids = []
    for epoch, png in inp.grids:
        rel = f"assets/epochs/epoch_{epoch:04d}.png"
        files[rel] = png
        grids.append((epoch, rel))
    closest = {}
    for n, png in inp.closest.items():
        closest[n] = f"assets/eval/{closest_name(n)}"
        files[closest[n]] = png
    for a in inp.assets:
        a.item_id = _safe_name(a.item_id)
    pages = -(-len(inp.assets) // page_size) if inp.assets else 0
    for i in range(pages):
        chunk = inp.assets[i * page_size:(i + 1) * page_size]
        for a in chunk:
            if a.png:  # text completions have none
                files[f"{GALLERY_DIR}/img/{a.item_id}.png"] = a.png
        files[_page_name(i + 1)] = _gallery_html(inp, chunk, i + 1, pages).encode()
    files["index.html"] = _index_html(inp, curves, grids, closest, pages).encode()
    store = Store(out_uri, storage)
    store.write_many({k: v for k, v in files.items() if k != "index.html"})
    store.write("index.html", files["index.html"])  # last: a report with an index is complete
    log(f"report: {store.url('index.html')} ({len(inp.evals)} evaluation(s), {len(grids)} epoch grid(s), "
        f"{len(inp.assets):,} of {inp.assets_total:,} assets on {pages} page(s))")
    return ReportResult(index=store.url("index.html"), out=store.uri, pages=pages, assets=len(inp.assets),
                        assets_total=inp.assets_total, evals=len(inp.evals), grids=len(grids), files=len(files))
