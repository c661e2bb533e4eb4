"""Reconciliation and audit reports as text, JSON, CSV and one self-contained HTML file each."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import re
from decimal import Decimal
from typing import Any

import orjson

from .changes import dumps
from .audit import AuditEntry, AuditTrail
from .reconcile import ReconcileReport, as_dict

FORMATS = ("text", "json", "csv", "html")


def number(value: Any, locale: str = "en") -> str:
    """A number for people: ``1 234 567,89`` in Norwegian (``nb``), ``1,234,567.89`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, float)):
        return str(value)
    text = f"{value:,}" if not isinstance(value, Decimal) else f"{value:,f}"
    if locale == "nb":
        return text.replace(",", "\u00a0").replace(".", ",")
    return text


_DECIMAL_TEXT = re.compile(r"-?\d+\.\d+")


def shown(value: Any, locale: str = "en") -> str:
    """A value as a report shows it: amounts (decimals) localised, integers (account numbers, ids)
    as they are, instants in UTC ISO form, NULL as NULL. In audit images decimals are text."""
    if value is None:
        return "NULL"
    if isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value):
        value = Decimal(value)
    if isinstance(value, (Decimal, float)):
        return number(value, locale)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.isoformat(sep=" ")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    return str(value)


def _key(key: tuple) -> str:
    """A key as people write it: numbers without thousands separators."""
    return ", ".join(str(k) if isinstance(k, (int, Decimal)) and not isinstance(k, bool) else shown(k) for k in key)


def _pretty_json(data: dict) -> str:
    """Indented JSON with values as the change model encodes them (decimals as text, bytes base64)."""
    return orjson.dumps(orjson.loads(dumps(data)), option=orjson.OPT_INDENT_2).decode() + "\n"


# -- reconcile ----------------------------------------------------------------------------------
def reconcile_report(report: ReconcileReport, fmt: str, locale: str = "en") -> str:
    if fmt == "json":
        return _pretty_json(as_dict(report))
    if fmt == "csv":
        return _reconcile_csv(report)
    if fmt == "html":
        return _reconcile_html(report, locale)
    return _reconcile_text(report, locale)


def _verdict(t: Any, locale: str) -> str:
    if t.equal:
        return "equal"
    parts = [f"{number(n, locale)} {what}" for n, what in ((t.missing, "missing in target"), (t.extra, "extra in target"),
                                                           (t.different, "differ"), (t.unmappable, "cannot be mapped"))
             if n]
    return ", ".join(parts)


def _reconcile_text(report: ReconcileReport, locale: str) -> str:
    out = [f"pair {report.pair}: {'EQUAL' if report.equal else 'DIFFERENCES FOUND'} "
           f"({report.started_at:%Y-%m-%d %H:%M:%S} UTC)"]
    if report.pending not in (None, 0):
        out.append(f"  the pair has changes not yet applied ({report.pending}): differences they explain settle")
    for t in report.tables:
        out.append(f"  {t.source_table} -> {t.target_table}: {number(t.source_rows, locale)} source rows, "
                   f"{number(t.target_rows, locale)} target rows, {_verdict(t, locale)}"
                   f"{f', {t.settled} settled while comparing' if t.settled else ''} "
                   f"[{t.seconds:.2f}s; source {t.methods.get('source')}, target {t.methods.get('target')}]")
        for row in t.rows:
            if row.kind == "different":
                cols = "; ".join(f"{c}: {shown(s, locale)} -> target {shown(v, locale)}"
                                 for c, (s, v) in row.columns.items())
                out.append(f"    differs  ({_key(row.key)})  {cols}")
            else:
                out.append(f"    {'missing' if row.kind == 'missing' else 'extra  '}  ({_key(row.key)})")
        hidden = t.missing + t.extra + t.different - len(t.rows)
        if hidden > 0:
            out.append(f"    ... and {number(hidden, locale)} more (raise --limit to list them)")
        if t.counted_from_fingerprints:
            out.append("    (so many rows differ that they were counted from the fingerprints, not read one by one)")
        for total in t.totals:
            if not total["equal"]:
                out.append(f"    control total differs: account {total['account']} period {total['period']}: "
                           f"source {number(total['source_count'], locale)} rows / "
                           f"{number(total['source_sum'], locale)}, target {number(total['target_count'], locale)} "
                           f"rows / {number(total['target_sum'], locale)}")
    if report.repair is not None:
        verb = "would apply" if report.repair.get("dry_run") else "applied"
        out.append(f"repair {verb} {report.repair['upserts']} upsert(s) and {report.repair['deletes']} delete(s)")
        for line in report.repair.get("plan", []):
            out.append(f"    {line}")
    return "\n".join(out) + "\n"


def _reconcile_csv(report: ReconcileReport) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["pair", "source_table", "target_table", "kind", "key", "column", "source_value", "target_value"])
    for t in report.tables:
        for row in t.rows:
            if row.kind == "different":
                for column, (s, v) in row.columns.items():
                    writer.writerow([report.pair, t.source_table, t.target_table, row.kind, _key(row.key), column,
                                     shown(s), shown(v)])
            else:
                writer.writerow([report.pair, t.source_table, t.target_table, row.kind, _key(row.key), "", "", ""])
    return buffer.getvalue()


STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em;color:#1b1f24;max-width:80em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:2em}
.meta{color:#57606a;margin-bottom:1.5em}
.verdict{display:inline-block;padding:.3em .8em;border-radius:.3em;font-weight:600}
.ok{background:#dafbe1;color:#116329} .bad{background:#ffebe9;color:#a40e26}
table{border-collapse:collapse;margin:.8em 0;width:100%}
th,td{border:1px solid #d0d7de;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa;cursor:pointer;user-select:none} th:after{content:' \\2195';color:#8c959f}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.missing td{background:#fff8c5} tr.extra td{background:#ddf4ff} mark{background:#ffd8b5;padding:0 .15em}
"""
SORT = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, i){
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


def _cell(value: Any, locale: str, mark: bool = False) -> str:
    text = html.escape(shown(value, locale))
    numeric = isinstance(value, (int, Decimal, float)) and not isinstance(value, bool)
    attrs = f' class="num" data-v="{value}"' if numeric else ""
    return f"<td{attrs}>{f'<mark>{text}</mark>' if mark else text}</td>"


def _page(title: str, meta: str, body: list[str], locale: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="{"nb" if locale == "nb" else "en"}"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><div class=\"meta\">{meta}</div>{''.join(body)}"
            f"<script>{SORT}</script></body></html>\n")


def _reconcile_html(report: ReconcileReport, locale: str) -> str:
    nb = locale == "nb"
    words = {"equal": "Like" if nb else "Equal", "differ": "Avvik funnet" if nb else "Differences found"}
    body = [f'<p><span class="verdict {"ok" if report.equal else "bad"}">'
            f'{words["equal"] if report.equal else words["differ"]}</span></p>']
    heads = (["Kildetabell", "Måltabell", "Rader i kilde", "Rader i mål", "Mangler i mål", "Ekstra i mål", "Ulike",
              "Sekunder"] if nb else
             ["Source table", "Target table", "Source rows", "Target rows", "Missing in target", "Extra in target",
              "Differing", "Seconds"])
    body.append('<h2>' + ("Sammendrag" if nb else "Summary") + '</h2><table class="sortable"><thead><tr>'
                + "".join(f"<th>{h}</th>" for h in heads) + "</tr></thead><tbody>")
    for t in report.tables:
        body.append(f"<tr><td>{html.escape(t.source_table)}</td><td>{html.escape(t.target_table)}</td>"
                    + "".join(_cell(v, locale) for v in (t.source_rows, t.target_rows, t.missing, t.extra,
                                                         t.different))
                    + _cell(Decimal(f"{t.seconds:.2f}"), locale) + "</tr>")
    body.append("</tbody></table>")
    for t in report.tables:
        if not t.rows and not t.totals:
            continue
        body.append(f"<h2>{html.escape(t.source_table)} &rarr; {html.escape(t.target_table)}</h2>")
        if t.rows:
            body.append('<table class="sortable"><thead><tr>' + "".join(
                f"<th>{h}</th>" for h in (["Avvik", "Nøkkel", "Kolonne", "Kilde", "Mål"] if nb else
                                          ["Difference", "Key", "Column", "Source", "Target"]))
                + "</tr></thead><tbody>")
            kinds = ({"missing": "mangler i mål", "extra": "ekstra i mål", "different": "ulik"} if nb else
                     {"missing": "missing in target", "extra": "extra in target", "different": "differs"})
            for row in t.rows:
                key = html.escape(_key(row.key))
                if row.kind == "different":
                    for column, (s, v) in row.columns.items():
                        body.append(f'<tr class="different"><td>{kinds[row.kind]}</td><td>{key}</td>'
                                    f"<td>{html.escape(column)}</td>{_cell(s, locale, True)}{_cell(v, locale, True)}"
                                    "</tr>")
                else:
                    body.append(f'<tr class="{row.kind}"><td>{kinds[row.kind]}</td><td>{key}</td><td></td>'
                                "<td></td><td></td></tr>")
            body.append("</tbody></table>")
            hidden = t.missing + t.extra + t.different - len(t.rows)
            if hidden > 0:
                body.append(f"<p>… {number(hidden, locale)} {'flere' if nb else 'more'}</p>")
        if t.totals:
            body.append("<h3>" + ("Saldobalanse (kontrollsummer)" if nb else "Control totals (trial balance)")
                        + '</h3><table class="sortable"><thead><tr>' + "".join(
                            f"<th>{h}</th>" for h in (["Konto", "Periode", "Antall kilde", "Sum kilde", "Antall mål",
                                                       "Sum mål"] if nb else
                                                      ["Account", "Period", "Source count", "Source sum",
                                                       "Target count", "Target sum"]))
                        + "</tr></thead><tbody>")
            for total in t.totals:
                bad = not total["equal"]
                body.append(f'<tr class="{"different" if bad else ""}"><td>{html.escape(str(total["account"]))}</td>'
                            f"<td>{html.escape(str(total['period']))}</td>"
                            + "".join(_cell(total[k], locale, bad) for k in ("source_count", "source_sum",
                                                                               "target_count", "target_sum"))
                            + "</tr>")
            body.append("</tbody></table>")
    meta = (f"{'Par' if nb else 'Pair'} <b>{html.escape(report.pair)}</b> · "
            f"{report.started_at:%Y-%m-%d %H:%M:%S} UTC")
    return _page(("Avstemming" if nb else "Reconciliation") + f": {report.pair}", meta, body, locale)


# -- audit ------------------------------------------------------------------------------------------
def audit_report(found: AuditTrail, fmt: str, locale: str = "en") -> str:
    if fmt == "json":
        return _pretty_json(_audit_dict(found))
    if fmt == "csv":
        return _audit_csv(found)
    if fmt == "html":
        return _audit_html(found, locale)
    return _audit_text(found, locale)


def _when(value: dt.datetime | None) -> str:
    return "" if value is None else value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _changes(entry: AuditEntry, locale: str = "en") -> str:
    if entry.reason == "snapshot":
        return f"{(entry.after or {}).get('rows', '')} rows copied".strip()
    parts = [f"{c}: {shown(b, locale)} -> {shown(a, locale)}" for c, (b, a) in entry.changed.items()]
    return "; ".join(parts)


def _audit_dict(found: AuditTrail) -> dict:
    return {
        "filters": found.filters, "total": found.total, "listed": len(found.entries),
        "summary": [{"table": t, "kind": k, "day": d, "count": n} for (t, k, d), n in sorted(found.summary.items())],
        "entries": [{"id": e.id, "at": e.at.isoformat(), "pair": e.pair, "source_table": e.source_table,
                     "target_table": e.target_table, "op": e.op, "reason": e.reason, "key": e.key,
                     "before": e.before, "after": e.after, "source_position": e.position, "source_txid": e.txid,
                     "committed_at": e.committed_at.isoformat() if e.committed_at else None, "error": e.error}
                    for e in found.entries],
    }


def _audit_text(found: AuditTrail, locale: str) -> str:
    out = [f"audit trail: {number(found.total, locale)} entr{'y' if found.total == 1 else 'ies'}"
           + "".join(f", {k} {v}" for k, v in found.filters.items() if v not in (None, []) and k != "pairs")]
    out.append("summary (table, kind, day: count):")
    for (table, kind, day), count in sorted(found.summary.items()):
        out.append(f"  {table:<20} {kind:<22} {day}  {number(count, locale)}")
    if found.total > len(found.entries):
        out.append(f"the last {number(len(found.entries), locale)} entries (raise --limit for more):")
    for e in found.entries:
        where = f" at {e.position}" if e.position not in (None, "") else ""
        txid = f" txid {e.txid}" if e.txid else ""
        why = f" error: {e.error}" if e.error else ""
        out.append(f"  {_when(e.at)}  {e.pair}  {e.target_table} ({', '.join(map(str, e.key))})  {e.op} "
                   f"[{e.reason}]{where}{txid}  {_changes(e, locale)}{why}")
    return "\n".join(out) + "\n"


def _audit_csv(found: AuditTrail) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "at", "pair", "source_table", "target_table", "op", "reason", "key", "source_position",
                     "source_txid", "committed_at", "changes", "error"])
    for e in found.entries:
        writer.writerow([e.id, e.at.isoformat(), e.pair, e.source_table, e.target_table, e.op, e.reason,
                         ", ".join(map(str, e.key)), dumps(e.position), e.txid or "",
                         e.committed_at.isoformat() if e.committed_at else "", _changes(e), e.error or ""])
    return buffer.getvalue()


def _audit_html(found: AuditTrail, locale: str) -> str:
    nb = locale == "nb"
    body = ["<h2>" + ("Sammendrag" if nb else "Summary") + '</h2><table class="sortable"><thead><tr>'
            + "".join(f"<th>{h}</th>" for h in (["Tabell", "Type", "Dag", "Antall"] if nb else
                                                ["Table", "Kind", "Day", "Count"]))
            + "</tr></thead><tbody>"]
    for (table, kind, day), count in sorted(found.summary.items()):
        body.append(f"<tr><td>{html.escape(table)}</td><td>{html.escape(kind)}</td><td>{day}</td>"
                    f"{_cell(count, locale)}</tr>")
    body.append("</tbody></table>")
    body.append("<h2>" + ("Endringer" if nb else "Entries") + '</h2><table class="sortable"><thead><tr>' + "".join(
        f"<th>{h}</th>" for h in (["Tid (UTC)", "Par", "Tabell", "Nøkkel", "Operasjon", "Årsak", "Kildeposisjon",
                                   "Endret"] if nb else
                                  ["Time (UTC)", "Pair", "Table", "Key", "Op", "Reason", "Source position",
                                   "Changed"])) + "</tr></thead><tbody>")
    for e in found.entries:
        css = "missing" if e.reason in ("parked", "discarded") else "extra" if e.reason == "repair" else ""
        changed = html.escape(_changes(e, locale)) + (f"<br><mark>{html.escape(e.error)}</mark>" if e.error else "")
        body.append(f'<tr class="{css}"><td>{_when(e.at)}</td><td>{html.escape(e.pair)}</td>'
                    f"<td>{html.escape(e.target_table)}</td><td>{html.escape(', '.join(map(str, e.key)))}</td>"
                    f"<td>{html.escape(e.op)}</td><td>{html.escape(e.reason)}</td>"
                    f"<td>{html.escape(dumps(e.position) if e.position is not None else '')}</td><td>{changed}</td></tr>")
    body.append("</tbody></table>")
    meta = (f"{number(found.total, locale)} {'oppføringer' if nb else 'entries'}"
            + "".join(f" · {html.escape(str(k))}: {html.escape(str(v))}" for k, v in found.filters.items()
                      if v not in (None, [])))
    return _page("Revisjonsspor" if nb else "Audit trail", meta, body, locale)
