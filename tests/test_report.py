"""The HTML report: a real generated batch (Ray Data) from a tiny package with a training history,
per-epoch grids and a stored evaluation; every file the pages reference exists; the pages render in
headless Chromium with every image loaded (when /usr/bin/chromium is installed); user errors are one line.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import PipelineError
from pipeline.evaluate import evaluate_package
from pipeline.families.dcgan.model import Generator
from pipeline.generate import run_generate
from pipeline.image.grid import grid_png
from pipeline.package import export_package
from pipeline.report.build import build_report
from pipeline.report.plots import line_plot
from pipeline.specs import EvaluateSpec, ModelSpec, validate_job
from pipeline.storage import verify

from helpers import require_system

DATE = "2026-11-28"
CHROMIUM = "/usr/bin/chromium"
EPOCHS = 3
PROMPTS = '{"prompt": "a <b>bold</b> & seven", "label": 7, "n": 2}\n{"prompt": "zero", "label": 0}\n'


class Refs(HTMLParser):
    """Every src and href of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.imgs = 0

    def handle_starttag(self, tag, attrs):
        self.imgs += tag == "img"
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def refs_of(page: Path) -> Refs:
    p = Refs()
    p.feed(page.read_text(encoding="utf-8"))
    return p


@pytest.fixture(scope="module")
def batch(ray_session, tmp_path_factory) -> dict:
    """A model package with a 3-epoch history and grids, one evaluation, and a generated batch of 25 items."""
    root = tmp_path_factory.mktemp("report")
    cfg = ModelSpec(image_size=32, channels=1, z_dim=16, g_width=8, d_width=8, conditional=True)
    torch.manual_seed(0)
    g = Generator(cfg).eval()
    run = root / "checkpoints" / "t"
    (run / "samples").mkdir(parents=True)
    for e in range(EPOCHS):
        with torch.no_grad():
            (run / "samples" / f"epoch_{e:04d}.png").write_bytes(grid_png(g(torch.randn(64, 16),
                                                                              torch.arange(64) % 10)))
    history = [{"epoch": e, "loss_D": 1.2 - 0.2 * e, "loss_G": 0.8 + 0.3 * e, "D(x)": 0.6, "D(G(z))": 0.4}
               for e in range(EPOCHS)]
    model = str(root / "models" / "t" / "v1")
    export_package(model, g, cfg, {"job": "t", "version": "v1", "epochs": EPOCHS, "metrics": history, "run": str(run),
                                   "train": {"data": {"source": "digits", "limit": 150}},
                                   "data": {"source": "digits", "count": 150}})
    evaluate_package(model, EvaluateSpec(samples=50), log=lambda s: None)
    prompts = root / "prompts.jsonl"
    prompts.write_text(PROMPTS)
    job = validate_job({"name": "t", "storage": {"root": str(root)},
                        "generate": {"model": model, "seeds": {"count": 22}, "shard_size": 10,
                                     "prompts": {"uri": str(prompts)},
                                     "scaling": {"num_actors": 1, "num_cpus": 0.5, "batch_size": 16}}})
    out = run_generate(job, date=DATE, progress=False, log=lambda s: None).output
    return {"root": root, "model": model, "output": out}


def check_pages(folder: Path) -> list[Path]:
    """Every page of the report; asserts every file any page references exists."""
    pages = sorted(folder.rglob("*.html"))
    assert pages
    for page in pages:
        for ref in refs_of(page).refs:
            assert "://" not in ref and not ref.startswith("/"), f"{page}: absolute reference {ref}"
            assert (page.parent / unquote(ref)).is_file(), f"{page.relative_to(folder)}: missing {ref}"
    return pages


def test_report_of_a_generated_batch(batch, tmp_path):
    res = build_report(batch["output"], str(tmp_path / "r"), page_size=10, log=lambda s: None)
    folder = tmp_path / "r"
    assert res.index == str(folder / "index.html")
    assert (res.assets, res.assets_total, res.pages, res.evals, res.grids) == (25, 25, 3, 1, EPOCHS)
    pages = check_pages(folder)
    assert [p.relative_to(folder).as_posix() for p in pages] == [
        "gallery/page-0001.html", "gallery/page-0002.html", "gallery/page-0003.html", "index.html"]
    index = (folder / "index.html").read_text()
    # the metrics table with the floor beside it, curves, every epoch's grid, links to every gallery page
    assert "floor (real vs real)" in index and "FLD" in index and "memorization rate" in index and "N = 50" in index
    # the per-class table: one row per digit class, the generated share beside the real one
    per_class = index.split("<h4>Per class</h4>", 1)[1].split("</table>", 1)[0]
    assert per_class.count("<tr") == 1 + 10 and "generated / real" in per_class
    assert "Jensen–Shannon divergence" in index and "grouped by the generation label" in index
    assert refs_of(folder / "index.html").imgs == 2 + EPOCHS + 1  # curves, grids, closest pairs
    for name in ("loss.png", "discriminator.png"):
        with Image.open(folder / "assets" / name) as im:
            assert im.size == (640, 360)
    # each asset with its provenance; user text (prompts) escaped, never markup
    gallery = "".join((folder / "gallery" / f"page-000{i}.html").read_text() for i in (1, 2, 3))
    assert gallery.count("class='card'") == 25
    assert "s000000000000" in gallery and "p000000001-00001" in gallery and "trainedAlgorithmicMedia" in gallery
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; seven" in gallery and "<b>bold</b>" not in gallery
    # the published batch is untouched
    assert verify(batch["output"]).ok


def test_metrics_table_shows_both_fld_thresholds(batch):
    from pipeline.evaluate import read_results
    from pipeline.specs import GateSpec

    result = read_results(batch["model"])[0]
    ratio = result.model.fld / result.floor.fld
    html = result.html(GateSpec(max_fld=1e9, max_fld_ratio=round(ratio / 2, 2)), {})
    fld_row = next(row for row in html.split("<tr>") if row.startswith("<td>FLD"))
    assert '≤ 1e+09 <span class="ok">pass</span>' in fld_row
    assert f'≤ {round(ratio / 2, 2):g}× floor <span class="bad">FAIL</span>' in fld_row


def test_report_beside_the_output_by_default_and_of_a_model(batch):
    r = CliRunner().invoke(app, ["report", batch["model"]])
    assert r.exit_code == 0, r.output
    folder = Path(batch["model"] + ".report")
    assert f"report: {folder}/index.html" in r.output and "0 gallery page(s)" in r.output
    check_pages(folder)
    assert "This is a model package" in (folder / "index.html").read_text()
    assert verify(batch["model"]).ok


def test_report_gallery_from_pngs_alone(batch, tmp_path):
    """A batch without Parquet: the metadata comes from the PNG text chunks."""
    src = Path(batch["output"])
    copy = tmp_path / "pngs"
    shutil.copytree(src, copy)
    for f in (copy / "data").iterdir():
        f.unlink()
    res = build_report(str(copy), str(tmp_path / "r"), max_items=5, log=lambda s: None)
    assert (res.assets, res.pages) == (5, 1)
    page = (tmp_path / "r" / "gallery" / "page-0001.html").read_text()
    assert ("p000000001-00000" in page and "s000000000001" in page and "model_sha256" in page
            and "trainedAlgorithmicMedia" in page)
    check_pages(tmp_path / "r")


def test_report_renders_in_headless_chromium(batch, tmp_path):
    require_system(CHROMIUM, "chromium")
    folder = tmp_path / "r"
    build_report(batch["output"], str(folder), page_size=10, log=lambda s: None)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    for page in ("index.html", "gallery/page-0002.html"):
        url = (folder / page).as_uri()
        shot = tmp_path / (page.replace("/", "-") + ".png")
        subprocess.run(flags + ["--window-size=1200,2000", f"--screenshot={shot}", url], check=True, timeout=120,
                       capture_output=True)
        with Image.open(shot) as im:
            assert im.size == (1200, 2000)
            assert len(im.convert("L").getcolors(1 << 16)) > 5  # not a blank page
        # the page's own script counts the images that failed to load
        dom = subprocess.run(flags + ["--dump-dom", url], check=True, timeout=120, capture_output=True,
                             text=True).stdout
        expected = refs_of(folder / page).imgs
        assert f'data-images="{expected}"' in dom and 'data-images-broken="0"' in dom, dom[:300]
        if page == "index.html":  # the per-class table is in the rendered page
            assert "<h4>Per class</h4>" in dom and "<table class=\"classes\">" in dom


def test_broken_image_is_reported_on_the_page(batch, tmp_path):
    require_system(CHROMIUM, "chromium")
    folder = tmp_path / "r"
    build_report(batch["model"], str(folder), log=lambda s: None)
    (folder / "assets" / "loss.png").unlink()
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                          (folder / "index.html").as_uri()], check=True, timeout=120, capture_output=True,
                         text=True).stdout
    assert 'data-images-broken="1"' in dom and "failed to load" in dom


def test_line_plot_draws_lines_and_survives_odd_histories():
    png = line_plot({"a": [3.0, 2.0, 1.5], "b": [0.1, 0.5, float("nan")]}, title="t")
    with Image.open(io.BytesIO(png)) as im:
        colors = {c for _, c in im.convert("RGB").getcolors(1 << 16)}
    assert (31, 119, 180) in colors and (214, 39, 40) in colors  # both series drawn
    for series in ({"a": [1.0]}, {"a": []}, {"a": [float("nan")] * 3}, {"a": [2.0, 2.0]}):
        with Image.open(io.BytesIO(line_plot(series, title="t"))) as im:
            assert im.size == (640, 360)


def test_report_errors_are_one_line(batch, tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 1 and "nothing published here" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["report", batch["output"], "--out", batch["output"] + "/report"])
    assert r.exit_code == 1 and "a report must not change a published output" in r.output
    r = runner.invoke(app, ["report", batch["output"], "--page-size", "0"])
    assert r.exit_code == 1 and "--page-size: must be greater than 0" in r.output
    run_dir = Path(batch["root"]) / "checkpoints"
    with pytest.raises(PipelineError, match="nothing published"):
        build_report(str(run_dir), log=lambda s: None)
    manifest = json.loads((Path(batch["output"]) / "manifest.json").read_text())
    assert manifest["kind"] == "generate"  # reading never rewrote it


def test_evaluate_and_report_on_s3(s3_storage):
    """Storage differs by URI only: package, evaluation, extractor cache and report all on (moto) S3."""
    from pipeline.storage import Store

    cfg = ModelSpec(image_size=32, channels=1, z_dim=16, g_width=8, d_width=8, conditional=True)
    torch.manual_seed(0)
    model = f"{s3_storage.root}/models/t/v1"
    export_package(model, Generator(cfg), cfg, {"train": {"data": {"source": "digits", "limit": 150}},
                                                      "metrics": [{"loss_D": 1.0, "loss_G": 2.0}]}, storage=s3_storage)
    first = evaluate_package(model, EvaluateSpec(samples=50), storage=s3_storage, log=lambda s: None)
    assert first.uri == f"{model}.eval/n50.json" and first.extractor["uri"].startswith(f"{model}.eval/extractor/")
    again = evaluate_package(model, EvaluateSpec(samples=50), storage=s3_storage, log=lambda s: None)
    assert again.skipped and again.to_json()["metrics"] == first.to_json()["metrics"]
    assert verify(model, s3_storage).ok
    res = build_report(model, storage=s3_storage, log=lambda s: None)
    out = Store(f"{model}.report", s3_storage)
    assert res.index == f"{model}.report/index.html" and out.exists("index.html")
    html_text = out.read("index.html").decode()
    assert "N = 50" in html_text and all(out.exists(rel) for rel in ("assets/loss.png", "assets/eval/n50-closest.png"))
