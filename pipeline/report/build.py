"""A static HTML report of a model package or a generated batch, readable in any browser offline.

    aigc report outputs/generated/demo/2026-11-28        # → outputs/generated/demo/2026-11-28.report/index.html
    aigc report outputs/models/demo/<version> --out /tmp/demo-report

It holds

* the model: job, version, sha256, data, epochs;
* the quality metrics of every evaluation stored beside the package (``<package>.eval/``, see
  :mod:`pipeline.evaluate`): each result renders its own section (an image model's figures beside
  the real-vs-real floor with the gate's thresholds and the closest pairs; a text model's
  perplexity beside its baseline);
* training curves, the family's choice of metric series (:meth:`Implementation.curves`), drawn as
  PNG line plots with PIL (no matplotlib needed) from the metrics history in ``model.json``;
* what the model made at every epoch, from the training run's ``samples/`` folder (grids, text);
* for a generated batch: a paged gallery (``gallery/page-0001.html``, ...) of the assets, each a
  card the family draws (:meth:`Implementation.card`) with its provenance.

The skeleton here knows no family: it asks the family of the package's ``model.arch``.

Every file the HTML references is written into the report folder and referenced relatively, so
the folder can be copied or served anywhere. The default folder is a sibling of the URI
(``<URI>.report``), never inside it: a published output stays exactly what its manifest lists.
A small script on each page counts images that failed to load and says so at the top.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.catalog.registry import arch_of, implementation, parse_config
from pipeline.errors import PipelineError, StorageError
from pipeline.layout import SAMPLES_DIR, report_uri
from pipeline.report.assets import Asset
from pipeline.report.html import esc, kv_table, page, src
from pipeline.report.plots import line_plot
from pipeline.specs.schema import GateSpec, StorageSpec
from pipeline.storage import MANIFEST, Store, is_published, resolve_recorded

PAGE_SIZE = 100
MAX_ITEMS = 1000
GALLERY_DIR = "gallery"


@dataclass
class ReportInputs:
    """Everything a report shows, read from storage."""

    uri: str
    kind: str  # "model" | "generate"
    model_uri: str
    model_meta: dict[str, Any]
    manifest: dict[str, Any]
    family: Any = None  # the package's family implementation
    evals: list[Any] = field(default_factory=list)
    samples: list[tuple[int, str, bytes]] = field(default_factory=list)  # (epoch, ext, bytes)
    samples_note: str = ""
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


def _epoch_samples(run_uri: str, storage: StorageSpec | None, ext: str) -> tuple[list[tuple[int, str, bytes]], str]:
    """Every epoch's samples from ``<run>/samples/epoch_NNNN.<ext>``, with a note when there are none."""
    if not run_uri:
        return [], "the model package names no training run"
    try:
        store = Store(run_uri, storage)
        found = []
        for rel in store.list(SAMPLES_DIR):
            name = rel.rsplit("/", 1)[-1]
            stem, _, suffix = name.partition(".")
            if stem.startswith("epoch_") and stem[6:].isdigit() and suffix == ext:
                found.append((int(stem[6:]), ext, store.read(rel)))
    except StorageError as exc:
        return [], f"cannot read the training run's samples ({exc})"
    return sorted(found), ("" if found else f"no samples at {run_uri}/{SAMPLES_DIR}")


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
        family = implementation(parse_config(model_meta["model"]))
    except StorageError as exc:
        raise PipelineError(f"{model_uri}: cannot read the model package's model.json ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise PipelineError(f"{model_uri}/model.json: names no model this installation knows ({exc})") from None
    inputs = ReportInputs(uri=store.uri, kind=manifest["kind"], model_uri=model_store.uri, model_meta=model_meta,
                          manifest=manifest, family=family, gate=gate or _gate_from_spec(manifest.get("spec")))
    inputs.evals = family.read_results(model_store.uri, storage)
    run_uri = str(model_meta.get("run") or "")
    inputs.samples, inputs.samples_note = _epoch_samples(resolve_recorded(run_uri, model_store.uri) if run_uri else "",
                                                         storage, family.samples_ext)
    if inputs.kind == "generate":
        inputs.assets = family.read_assets(store, manifest, max_items)
        inputs.assets_total = int(manifest.get("counts", {}).get("items", 0)) or len(inputs.assets)
    return inputs


def _samples_html(samples: list[tuple[int, str, str | bytes]]) -> str:
    """Epoch samples: pictures side by side, text one block each."""
    figures = []
    for epoch, ext, shown in samples:
        if ext == "txt":
            text = shown.decode("utf-8", "replace") if isinstance(shown, bytes) else shown
            figures.append(f"<figure><pre style='white-space:pre-wrap;max-width:520px'>{esc(text)}</pre>"
                           f"<figcaption>epoch {epoch + 1}</figcaption></figure>")
        else:
            figures.append(f"<figure><img class='px' src='{src(str(shown))}' alt='epoch {epoch + 1}' width='274' "
                           f"height='274'><figcaption>epoch {epoch + 1}</figcaption></figure>")
    return "<div class='grids'>" + "".join(figures) + "</div>"


def _index_html(inp: ReportInputs, curves: dict[str, str], samples: list[tuple[int, str, str | bytes]],
                eval_files: dict[str, str], pages: int) -> str:
    meta, man = inp.model_meta, inp.manifest
    data = meta.get("data") or {}
    title = f"aigc report: {meta.get('job') or man.get('job') or 'model'}"
    body = [f"<h1>{esc(title)}</h1>", f"<p class='note'>{esc(inp.uri)}</p>", "<h2>Overview</h2>"]
    amount = f"{data.get('count', '?')} {data.get('unit', 'examples')}"
    rows: list[tuple[str, Any]] = [("model package", inp.model_uri), ("model sha256", meta.get("model_sha256")),
                                   ("architecture", arch_of(meta.get("model") or {})),
                                   ("version", meta.get("version")), ("epochs trained", meta.get("epochs")),
                                   ("training data", f"{data.get('uri') or data.get('source', '?')}, {amount}"
                                    if data else "")]
    if inp.kind == "generate":
        c = man.get("counts", {})
        rows += [("generated output", inp.uri), ("created", man.get("created_at")),
                 ("items", f"{c.get('items', 0):,} ({c.get('seed_items', 0):,} from seeds, "
                           f"{c.get('prompt_items', 0):,} from prompts; {c.get('rejected', 0)} prompts rejected)"),
                 ("files / bytes", f"{c.get('files', 0):,} / {c.get('bytes', 0):,}")]
        used, cost = man.get("usage") or {}, man.get("cost") or {}
        if used:  # what the publishing call used (pipeline.cost): its CPU-s, requests and bytes
            reqs = ", ".join(f"{k} {v:,}" for k, v in (used.get("requests") or {}).items() if v) or "none counted"
            rows.append(("usage of this call", f"{used.get('cpu_s', 0):,.1f} CPU-s, {used.get('gpu_s', 0):,.1f} GPU-s, "
                                               f"{used.get('items', 0):,} items, {used.get('bytes', 0):,} bytes; "
                                               f"requests: {reqs}"))
        if cost.get("total") is not None:
            per = cost.get("per_1k_assets")
            rows.append(("cost (the job's price table)",
                         f"{cost['total']:.4f} {cost.get('currency', '')}"
                         + (f", {per:.4f} per 1,000 assets" if per is not None else "")
                         + f" (priced: {', '.join(cost.get('priced') or [])})"))
    body.append(kv_table(rows))

    body.append("<h2>Quality metrics</h2>")
    if not inp.evals:
        body.append("<p>No evaluation stored beside this model yet: run <code>aigc evaluate "
                    f"{esc(inp.model_uri)}</code>.</p>")
    body += [r.html(inp.gate, eval_files) for r in inp.evals]

    body.append("<h2>Training curves</h2>")
    if curves:
        body += [f"<img src='{src(p)}' alt='{esc(name)}' width='640' height='360'>" for name, p in curves.items()]
    else:
        body.append("<p>The model package holds no training history.</p>")

    body.append("<h2>Samples per epoch</h2><p class='note'>The same latents, labels and prompts every epoch.</p>")
    body.append(_samples_html(samples) if samples else f"<p>{esc(inp.samples_note)}</p>")

    body.append("<h2>Gallery</h2>")
    if inp.kind != "generate":
        body.append("<p>This is a model package; run <code>aigc report</code> on a generated output for its "
                    "gallery.</p>")
    elif not inp.assets:
        body.append("<p>The output holds no assets.</p>")
    else:
        body.append(f"<p>{len(inp.assets):,} of {inp.assets_total:,} assets (by item id), {pages} page(s): "
                    + " ".join(f"<a href='{src(_page_name(i))}'>{i}</a>" for i in range(1, pages + 1)) + "</p>")
    return page(title, body)


def _page_name(i: int) -> str:
    return f"{GALLERY_DIR}/page-{i:04d}.html"


def _asset_file(a: Asset) -> str | None:
    return f"img/{a.item_id}.{a.ext}" if a.data else None


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
    cards = "".join(inp.family.card(a, _asset_file(a)) for a in assets)
    title = f"gallery {num}/{pages}: {inp.manifest.get('job', '')}"
    return page(title, [f"<h1>{esc(title)}</h1>", "".join(nav), f"<div class='gallery'>{cards}</div>", "".join(nav)])


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
    out_uri = (out or report_uri(inp.uri)).rstrip("/")
    if out_uri == inp.uri or out_uri.startswith(inp.uri + "/"):
        raise PipelineError(f"--out: {out_uri} is inside {inp.uri}; a report must not change a published output")
    files: dict[str, bytes] = {}
    curves = {}
    history = inp.model_meta.get("metrics") or []
    for name, (title, series) in (inp.family.curves(history) if history else {}).items():
        files[f"assets/{name}"] = line_plot(series, title=title)
        curves[name] = f"assets/{name}"
    samples: list[tuple[int, str, str | bytes]] = []
    for epoch, ext, data in inp.samples:
        if ext == "txt":
            samples.append((epoch, ext, data))
            continue
        rel = f"assets/epochs/epoch_{epoch:04d}.{ext}"
        files[rel] = data
        samples.append((epoch, ext, rel))
    eval_files = {}
    for r in inp.evals:
        for name, data in r.report_files().items():
            eval_files[name] = f"assets/eval/{name}"
            files[eval_files[name]] = data
    for a in inp.assets:
        a.item_id = _safe_name(a.item_id)
    pages = -(-len(inp.assets) // page_size) if inp.assets else 0
    for i in range(pages):
        chunk = inp.assets[i * page_size:(i + 1) * page_size]
        for a in chunk:
            if a.data:  # text completions have no file of their own
                files[f"{GALLERY_DIR}/{_asset_file(a)}"] = a.data
        files[_page_name(i + 1)] = _gallery_html(inp, chunk, i + 1, pages).encode()
    files["index.html"] = _index_html(inp, curves, samples, eval_files, pages).encode()
    store = Store(out_uri, storage)
    store.write_many({k: v for k, v in files.items() if k != "index.html"})
    store.write("index.html", files["index.html"])  # last: a report with an index is complete
    shown = sum(1 for _, ext, _ in samples if ext != "txt")
    log(f"report: {store.url('index.html')} ({len(inp.evals)} evaluation(s), {shown} epoch grid(s), "
        f"{len(inp.assets):,} of {inp.assets_total:,} assets on {pages} page(s))")
    return ReportResult(index=store.url("index.html"), out=store.uri, pages=pages, assets=len(inp.assets),
                        assets_total=inp.assets_total, evals=len(inp.evals), grids=shown, files=len(files))
