"""The HTML page of a report: one self-contained file, sortable tables, no outside resources."""

from __future__ import annotations

import html
from decimal import Decimal
from typing import Any

from ._provenance import html_provenance

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em;color:#1b1f24;max-width:80em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:2em}
.meta{color:#57606a;margin-bottom:1.5em}
.verdict{display:inline-block;padding:.3em .8em;border-radius:.3em;font-weight:600}
.ok{background:#dafbe1;color:#116329} .bad{background:#ffebe9;color:#a40e26}
table{border-collapse:collapse;margin:.8em 0;width:100%}
th,td{border:1px solid #d0d7de;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa} table.sortable thead th{cursor:pointer;user-select:none}
table.sortable thead th:after{content:' \\2195';color:#8c959f}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tfoot td,tfoot th{font-weight:600;border-top:2px solid #57606a}
table.provenance th{width:14em} table.provenance code{word-break:break-all}
tr.missing td{background:#fff8c5} tr.extra td{background:#ddf4ff} mark{background:#ffd8b5;padding:0 .15em}
"""
SORT = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('thead th').forEach(function(th, i){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute('data-dir') !== 'asc';
      rows.sort(function(a, b){
        var x = a.cells[i].getAttribute('data-v') || a.cells[i].textContent;
        var y = b.cells[i].getAttribute('data-v') || b.cells[i].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y, 'nb');
        return asc ? c : -c;
      });
      rows.forEach(function(r){ body.appendChild(r); });
      th.setAttribute('data-dir', asc ? 'asc' : 'desc');
    });
  });
});
"""


def cell(value: Any, text: str, mark: bool = False) -> str:
    """A table cell showing ``text``; a number is right-aligned and sorts by its exact value."""
    escaped = html.escape(text)
    numeric = isinstance(value, (int, Decimal, float)) and not isinstance(value, bool)
    attrs = f' class="num" data-v="{html.escape(str(value))}"' if numeric else ""
    return f"<td{attrs}>{f'<mark>{escaped}</mark>' if mark else escaped}</td>"


def table(heads: list[str], rows: list[str], foot: str | None = None) -> str:
    """A sortable table: headings (plain text), body rows and a footer row (HTML), the footer never sorted."""
    return ('<table class="sortable"><thead><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in heads)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody>" + (f"<tfoot>{foot}</tfoot>" if foot else "")
            + "</table>")


def page(title: str, meta: str, body: str, after: str, locale: str) -> str:
    """The whole page: ``body`` between the markers the body's SHA-256 covers, then ``after``."""
    return (f'<!DOCTYPE html>\n<html lang="{"nb" if locale == "nb" else "en"}"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f'<h1>{html.escape(title)}</h1><div class="meta">{meta}</div><!--body-->{body}<!--/body-->{after}'
            f"<script>{SORT}</script></body></html>\n")


def html_page(title: str, meta: str, body: list[str], provenance: Any, locale: str) -> str:
    """A report's page: ``body`` joined, then its provenance block with the SHA-256 of that body."""
    content = "".join(body)
    return page(title, meta, content, html_provenance(provenance, content, locale), locale)
