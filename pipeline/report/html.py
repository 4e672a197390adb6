"""HTML building blocks of the report pages: the page shell, escaping, relative links, tables and
the gate's pass/fail cell. No pipeline imports: every layer that renders a section uses these.

Pixel images (``img.px``: sample grids, gallery cards, closest pairs) lie on a grey-and-white
checkerboard, so an RGBA asset's transparency shows as such; an opaque image covers it.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;\
max-width:1100px;padding:0 1rem;color:#222}
h1{font-size:1.6rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.6rem 0}\
td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}tr.worst td{background:#fdecea}
.ok{color:#16794a;font-weight:600}.bad{color:#b3261e;font-weight:600}.note{color:#666;font-size:.9rem}
img.px{image-rendering:pixelated;background:#fff conic-gradient(#ccc 25%,#fff 0 50%,#ccc 0 75%,#fff 0) 0 0/12px 12px}\
.grids{display:flex;flex-wrap:wrap;gap:1rem}.grids figure{margin:0}
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


def kv_table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows if v not in (None, ""))
    return f"<table>{cells}</table>"


def gate_cell(op: str, limit_text: str, ok: bool) -> str:
    """``≤ 2x floor pass`` as a table cell's content."""
    return (f'{"≤" if op == "<=" else "≥"} {esc(limit_text)} '
            f'<span class="{"ok" if ok else "bad"}">{"pass" if ok else "FAIL"}</span>')


def cell(key: str, value: Any) -> str:
    """A provenance table cell; a long sha256 is shortened, with the full hash on hover."""
    text = str(value)
    if key.endswith("sha256") and len(text) > 16:
        return f"<td title='{esc(text)}'>{esc(text[:16])}…</td>"
    return f"<td>{esc(text)}</td>"


def provenance_rows(meta: dict[str, Any], keys: list[str]) -> str:
    """The rows of a gallery card's provenance table, for the keys that have a value."""
    return "".join(f"<tr><td class='k'>{esc(k)}</td>{cell(k, meta[k])}</tr>" for k in keys
                   if meta.get(k) not in (None, ""))
