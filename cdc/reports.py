"""Reconciliation and audit reports as text, JSON, CSV and one self-contained HTML file each.

Values are shown as they are: a number only when its column is a number (Decimal, int, float), never a
text that looks like one (``'0012.50'`` stays ``0012.50``); amounts localised in text and HTML, raw in
CSV and JSON. Times are UTC, or Europe/Oslo with ``--locale nb``.

In text and HTML a value is one line whatever it holds: control characters (newline, carriage
return, escape, ...), Unicode line separators and direction overrides are written as escapes
(``\\n``, ``\\x1b``, ``\\u2028``) and a backslash as ``\\\\``, so no value can start a line of its own
(a forged provenance block) or redraw the terminal. CSV and JSON carry values raw: their quoting
keeps a value in its field.

Every report ends with its provenance (cdc.provenance) and the SHA-256 of its body, which covers:
text and CSV, every line before the provenance block; HTML, the page between ``<!--body-->`` and
``<!--/body-->``; JSON, the document without its ``provenance`` key, written with sorted keys and no
whitespace (``json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``).
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import re
from decimal import Decimal
from typing import Any, Callable
from zoneinfo import ZoneInfo

from ._report_html import cell, page, table
from .audit import AuditEntry, AuditTrail
from .changes import dumps, loads
from .provenance import sha256
from .reconcile import ReconcileReport, RowDifference, TableReport, as_dict

FORMATS = ("text", "json", "csv", "html")
OSLO = ZoneInfo("Europe/Oslo")


# -- values -----------------------------------------------------------------------------------------
#: What a text or HTML report escapes in a value: C0/C1 controls and DEL, Unicode line and paragraph
#: separators, direction marks, embeddings, overrides and isolates, and the backslash itself (so
#: every escape reads back one way).
_UNPRINTABLE = re.compile("[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069\\\\]")
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with every character that could break or redraw a report line escaped (see above)."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    char = match.group()
    return _ESCAPES.get(char) or (f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")


def number(value: Any, locale: str = "en") -> str:
    """A number for people: ``1 234 567,89`` in Norwegian (``nb``), ``1,234,567.89`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, float)):
        return printable(str(value))
    text = f"{value:,}" if not isinstance(value, Decimal) else f"{value:,f}"
    if locale == "nb":
        return text.replace(",", "\u00a0").replace(".", ",")
    return text


def zone(locale: str) -> dt.tzinfo:
    """The zone times are shown in: Europe/Oslo for ``nb``, else UTC."""
    return OSLO if locale == "nb" else dt.timezone.utc


def moment(value: dt.datetime | None, locale: str = "en") -> str:
    """A point in time for people, with its zone: ``2026-11-25 15:37:01 CET`` (nb), ``... UTC``."""
    if value is None:
        return ""
    aware = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return aware.astimezone(zone(locale)).strftime("%Y-%m-%d %H:%M:%S %Z")


def shown(value: Any, locale: str = "en") -> str:
    """A value as a report shows it: amounts (decimals) localised, integers (account numbers, ids)
    as they are, text exactly as stored, instants in the locale's zone, NULL as NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, (Decimal, float)):
        return number(value, locale)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(zone(locale))
        return value.isoformat(sep=" ")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    return printable(str(value))


def raw(value: Any) -> str:
    """A value for CSV: exactly as stored (a decimal with all its digits and no separators, an
    instant in ISO form with its offset, bytes as 0x-hex), NULL as NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, Decimal):
        return format(value, "f") if value.is_finite() else str(value)
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "0x" + bytes(value).hex()
    return str(value)


def _key(key: tuple, locale: str = "en") -> str:
    """A key as people write it: numbers without thousands separators."""
    return ", ".join(str(k) if isinstance(k, (int, Decimal)) and not isinstance(k, bool) else shown(k, locale)
                     for k in key)


def _plain(data: Any) -> Any:
    """Data as JSON has it (decimals as text, bytes as base64): what a reader of the file sees."""
    return loads(dumps(data))


# -- provenance -------------------------------------------------------------------------------------
def _provenance_fields(provenance: Any, locale: str) -> list[tuple[str, str]]:
    p = provenance
    return [("tool", p.tool), ("run id", p.run_id), ("generated", moment(p.generated_at, locale)),
            ("host / user", f"{p.host} / {p.user}"), ("source", ", ".join(p.sources)),
            ("target", ", ".join(p.targets)), ("as of", json.dumps(_plain(p.as_of), ensure_ascii=False)),
            ("filters", json.dumps(_plain(p.filters), ensure_ascii=False) if p.filters else "none"),
            ("config sha256", f"{p.config_sha256} ({', '.join(f.rsplit('/', 1)[-1] for f in p.files)})")]


def _with_provenance_lines(body: str, provenance: Any, locale: str, prefix: str) -> str:
    """``body``, then the provenance block, each line starting with ``prefix``, ending with the
    body's SHA-256."""
    if provenance is None:
        return body
    fields = _provenance_fields(provenance, locale) + [("body sha256", f"{sha256(body)} (the lines above)")]
    return body + f"{prefix}provenance:\n" + "".join(f"{prefix}  {name:<14} {value}\n" for name, value in fields)


def _json_with_provenance(data: dict, provenance: Any) -> str:
    data = _plain(data)
    data.pop("provenance", None)
    if provenance is not None:
        body = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        data["provenance"] = {**_plain(provenance.as_dict()), "body_sha256": sha256(body)}
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _html_provenance(provenance: Any, body: str, locale: str) -> str:
    if provenance is None:
        return ""
    nb = locale == "nb"
    fields = _provenance_fields(provenance, locale) + [("body sha256", sha256(body))]
    names = {"tool": "Verktøy", "run id": "Kjøring", "generated": "Laget", "host / user": "Maskin / bruker",
             "source": "Kilde", "target": "Mål", "as of": "Per (sjekkpunkt)", "filters": "Filtre",
             "config sha256": "Konfigurasjon (SHA-256)", "body sha256": "Innhold (SHA-256)"}
    rows = "".join(f"<tr><th>{html.escape(names[n] if nb else n)}</th><td><code>{html.escape(v)}</code></td></tr>"
                   for n, v in fields)
    return (f'<h2>{"Opphav" if nb else "Provenance"}</h2><table class="provenance">{rows}</table>'
            f'<p class="meta">{"SHA-256 av siden mellom &lt;!--body--&gt; og &lt;!--/body--&gt;" if nb else "SHA-256 of the page between &lt;!--body--&gt; and &lt;!--/body--&gt;"}</p>')


def _html_page(title: str, meta: str, body: list[str], provenance: Any, locale: str) -> str:
    content = "".join(body)
    return page(title, meta, content, _html_provenance(provenance, content, locale), locale)


# -- reconcile ----------------------------------------------------------------------------------
def reconcile_report(report: ReconcileReport, fmt: str, locale: str = "en") -> str:
    if fmt == "json":
        return _json_with_provenance(as_dict(report), report.provenance)
    if fmt == "csv":
        return _with_provenance_lines(_reconcile_csv(report), report.provenance, locale, "# ")
    if fmt == "html":
        return _reconcile_html(report, locale)
    return _with_provenance_lines(_reconcile_text(report, locale), report.provenance, locale, "")


def _verdict(t: TableReport, locale: str) -> str:
    if t.equal:
        return "equal"
    parts = [f"{number(n, locale)} {what}" for n, what in ((t.missing, "missing in target"), (t.extra, "extra in target"),
                                                           (t.different, "differ"), (t.unmappable, "cannot be mapped"))
             if n]
    return ", ".join(parts)


def _difference_line(row: RowDifference, locale: str) -> str:
    if row.kind == "different":
        cols = "; ".join(f"{printable(c)}: {shown(s, locale)} -> target {shown(v, locale)}"
                         for c, (s, v) in row.columns.items())
        return f"    differs  ({_key(row.key, locale)})  {cols}"
    if row.kind == "unmappable":
        return f"    cannot map source row ({_key(row.key, locale)})  {printable(row.error or '')}"
    note = f"  ({printable(row.note)})" if row.note else ""
    return f"    {'missing' if row.kind == 'missing' else 'extra  '}  ({_key(row.key, locale)}){note}"


def _reconcile_text(report: ReconcileReport, locale: str) -> str:
    out = [f"pair {report.pair}: {'EQUAL' if report.equal else 'DIFFERENCES FOUND'} "
           f"({moment(report.started_at, locale)})"]
    backlog = _backlog(report.pending)
    if backlog:
        out.append(f"  {backlog}: differences they explain settle once the pair applies them")
    for t in report.tables:
        out.append(f"  {t.source_table} -> {t.target_table}: {number(t.source_rows, locale)} source rows, "
                   f"{number(t.target_rows, locale)} target rows, {_verdict(t, locale)}"
                   f"{f', {t.settled} settled while comparing' if t.settled else ''} "
                   f"[{t.seconds:.2f}s; source {t.methods.get('source')}, target {t.methods.get('target')}]")
        out += [_difference_line(row, locale) for row in t.rows]
        if t.unlisted > 0:
            out.append(f"    ... and {number(t.unlisted, locale)} more (raise --limit to list them)")
        if t.counted_from_fingerprints:
            out.append("    (so many rows differ that they were counted from the fingerprints, not read one by one)")
        out += _totals_lines(t, locale)
    if report.repair is not None:
        out += _repair_lines(report.repair, locale)
    return "\n".join(out) + "\n"


#: A backlog a source describes in words (see Source.pending) that holds nothing: "0 bytes of WAL behind".
_NOTHING_BEHIND = re.compile(r"0 bytes\b")


def _backlog(pending: Any) -> str | None:
    """The pair's backlog when compared, in words; None when there was none (or it is unknown)."""
    if pending is None or pending == 0 or (isinstance(pending, str) and _NOTHING_BEHIND.match(pending)):
        return None
    if isinstance(pending, int):
        return f"the pair had {pending:,} source change(s) not yet applied"
    return f"the pair had not applied every source change yet ({printable(str(pending))})"


def _totals_lines(t: TableReport, locale: str) -> list[str]:
    out = []
    for total in t.totals:
        if not total["equal"]:
            out.append(f"    control total differs: account {printable(str(total['account']))} period "
                       f"{printable(str(total['period']))}: "
                       f"source {number(total['source_count'], locale)} rows / {number(total['source_sum'], locale)}, "
                       f"target {number(total['target_count'], locale)} rows / {number(total['target_sum'], locale)}, "
                       f"difference {number(total['difference'], locale)}")
    grand = t.totals_sum
    if grand is not None:
        out.append(f"    trial balance ({number(len(t.totals), locale)} account-months): source "
                   f"{number(grand['source_count'], locale)} rows / {number(grand['source_sum'], locale)}, target "
                   f"{number(grand['target_count'], locale)} rows / {number(grand['target_sum'], locale)}, "
                   f"difference {number(grand['difference'], locale)}")
    return out


def _repair_lines(repair: dict, locale: str) -> list[str]:
    verb = "would apply" if repair.get("dry_run") else "applied"
    kept = f"; {len(repair['kept'])} target row(s) kept (the source has their key)" if repair.get("kept") else ""
    out = [f"repair {verb} {repair['upserts']} upsert(s) and {repair['deletes']} delete(s){kept}"]
    for step in repair.get("plan", []):
        key = _key(tuple(step["key"]), locale)
        if step["op"] == "upsert":
            values = ", ".join(f"{c}={shown(v, locale)}" for c, v in step["source_row"].items())
            out.append(f"    upsert {step['table']} ({key})  from source {step['source_table']} "
                       f"({_key(tuple(step['source_key']), locale)}): {values}")
        else:
            out.append(f"    delete {step['table']} ({key})  {printable(step['why'])}")
    for kept_row in repair.get("kept", []):
        out.append(f"    keep   {kept_row['table']} ({_key(tuple(kept_row['key']), locale)})  "
                   f"{printable(kept_row['why'])}")
    return out


def _reconcile_csv(report: ReconcileReport) -> str:
    """One line per differing column, missing, extra or unmappable row; values raw."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["pair", "source_table", "target_table", "kind", "key", "column", "source_value", "target_value",
                     "note"])
    for t in report.tables:
        for row in t.rows:
            head = [report.pair, t.source_table, t.target_table, row.kind, ", ".join(raw(k) for k in row.key)]
            if row.kind == "different":
                for column, (s, v) in row.columns.items():
                    writer.writerow(head + [column, raw(s), raw(v), ""])
            else:
                writer.writerow(head + [row.column or "", "", "", row.error or row.note or ""])
    return buffer.getvalue()


def _reconcile_html(report: ReconcileReport, locale: str) -> str:
    nb = locale == "nb"
    body = [f'<p><span class="verdict {"ok" if report.equal else "bad"}">'
            f'{("Like" if nb else "Equal") if report.equal else ("Avvik funnet" if nb else "Differences found")}'
            "</span></p>"]
    heads = (["Kildetabell", "Måltabell", "Rader i kilde", "Rader i mål", "Mangler i mål", "Ekstra i mål", "Ulike",
              "Kan ikke tilordnes", "Sekunder"] if nb else
             ["Source table", "Target table", "Source rows", "Target rows", "Missing in target", "Extra in target",
              "Differing", "Cannot be mapped", "Seconds"])
    body.append("<h2>" + ("Sammendrag" if nb else "Summary") + "</h2>" + table(heads, [
        f"<tr><td>{html.escape(t.source_table)}</td><td>{html.escape(t.target_table)}</td>"
        + "".join(cell(v, shown(v, locale)) for v in (t.source_rows, t.target_rows, t.missing, t.extra, t.different,
                                                     t.unmappable))
        + cell(Decimal(f"{t.seconds:.2f}"), shown(Decimal(f"{t.seconds:.2f}"), locale)) + "</tr>"
        for t in report.tables]))
    for t in report.tables:
        if t.rows or t.totals:
            body.append(f"<h2>{html.escape(t.source_table)} &rarr; {html.escape(t.target_table)}</h2>")
            body += _html_differences(t, locale) + _html_totals(t, locale)
    if report.repair is not None:
        body += _html_repair(report.repair, locale)
    meta = f"{'Par' if nb else 'Pair'} <b>{html.escape(report.pair)}</b> · {moment(report.started_at, locale)}"
    return _html_page(("Avstemming" if nb else "Reconciliation") + f": {report.pair}", meta, body,
                      report.provenance, locale)


_KINDS = {"en": {"missing": "missing in target", "extra": "extra in target", "different": "differs",
                 "unmappable": "cannot be mapped"},
          "nb": {"missing": "mangler i mål", "extra": "ekstra i mål", "different": "ulik",
                 "unmappable": "kan ikke tilordnes"}}


def _html_differences(t: TableReport, locale: str) -> list[str]:
    if not t.rows:
        return []
    nb = locale == "nb"
    kinds = _KINDS["nb" if nb else "en"]
    rows = []
    for row in t.rows:
        key = html.escape(_key(row.key, locale))
        if row.kind == "different":
            for column, (s, v) in row.columns.items():
                rows.append(f'<tr class="different"><td>{kinds[row.kind]}</td><td>{key}</td>'
                            f"<td>{html.escape(column)}</td>{cell(s, shown(s, locale), True)}"
                            f"{cell(v, shown(v, locale), True)}</tr>")
        else:
            css = "missing" if row.kind == "unmappable" else row.kind
            why = f"<mark>{html.escape(row.error or row.note or '')}</mark>" if row.error or row.note else ""
            rows.append(f'<tr class="{css}"><td>{kinds[row.kind]}</td><td>{key}</td>'
                        f"<td>{html.escape(row.column or '')}</td><td>{why}</td><td></td></tr>")
    heads = ["Avvik", "Nøkkel", "Kolonne", "Kilde", "Mål"] if nb else ["Difference", "Key", "Column", "Source", "Target"]
    out = [table(heads, rows)]
    if t.unlisted > 0:
        out.append(f"<p>… {number(t.unlisted, locale)} {'flere' if nb else 'more'}</p>")
    return out


def _html_totals(t: TableReport, locale: str) -> list[str]:
    if not t.totals:
        return []
    nb = locale == "nb"
    names = ("source_count", "source_sum", "target_count", "target_sum", "difference")
    rows = []
    for total in t.totals:
        bad = not total["equal"]
        rows.append(f'<tr class="{"different" if bad else ""}"><td>{html.escape(str(total["account"]))}</td>'
                    f"<td>{html.escape(str(total['period']))}</td>"
                    + "".join(cell(total[k], shown(total[k], locale), bad) for k in names) + "</tr>")
    grand = t.totals_sum
    foot = (f'<tr class="{"" if grand["equal"] else "different"}"><th>{"Sum" if nb else "Total"}</th><th></th>'
            + "".join(cell(grand[k], shown(grand[k], locale), not grand["equal"]) for k in names) + "</tr>")
    heads = (["Konto", "Periode", "Antall kilde", "Sum kilde", "Antall mål", "Sum mål", "Differanse"] if nb else
             ["Account", "Period", "Source count", "Source sum", "Target count", "Target sum", "Difference"])
    return ["<h3>" + ("Saldobalanse (kontrollsummer)" if nb else "Control totals (trial balance)") + "</h3>"
            + table(heads, rows, foot)]


def _html_repair(repair: dict, locale: str) -> list[str]:
    nb = locale == "nb"
    rows = []
    for step in repair.get("plan", []):
        source = (", ".join(f"{c}={shown(v, locale)}" for c, v in step["source_row"].items())
                  if step["op"] == "upsert" else step["why"])
        rows.append(f"<tr><td>{html.escape(step['op'])}</td><td>{html.escape(step['table'])}</td>"
                    f"<td>{html.escape(_key(tuple(step['key']), locale))}</td><td>{html.escape(source)}</td></tr>")
    for kept in repair.get("kept", []):
        rows.append(f'<tr class="extra"><td>keep</td><td>{html.escape(kept["table"])}</td>'
                    f"<td>{html.escape(_key(tuple(kept['key']), locale))}</td><td>{html.escape(kept['why'])}</td></tr>")
    title = ("Retting (plan)" if nb else "Repair (plan)") if repair.get("dry_run") else ("Retting" if nb else "Repair")
    heads = ["Operasjon", "Tabell", "Nøkkel", "Kilderad / grunn"] if nb else ["Op", "Table", "Key", "Source row / why"]
    summary = (f"<p>{repair['upserts']} upsert, {repair['deletes']} delete"
               + (f", {repair.get('applied')} {'utført' if nb else 'applied'}" if "applied" in repair else "") + "</p>")
    return [f"<h2>{title}</h2>", summary, table(heads, rows)]


# -- audit ------------------------------------------------------------------------------------------
def audit_report(found: AuditTrail, fmt: str, locale: str = "en") -> str:
    if fmt == "json":
        return _json_with_provenance(_audit_dict(found), found.provenance)
    if fmt == "csv":
        return _with_provenance_lines(_audit_csv(found), found.provenance, locale, "# ")
    if fmt == "html":
        return _audit_html(found, locale)
    return _with_provenance_lines(_audit_text(found, locale), found.provenance, locale, "")


def _changes(entry: AuditEntry, show: Callable[[Any], str]) -> str:
    """What an entry changed, each value written by ``show``."""
    if entry.reason == "snapshot":
        return f"{(entry.after or {}).get('rows', '')} rows copied".strip()
    return "; ".join(f"{c}: {show(b)} -> {show(a)}" for c, (b, a) in entry.changed.items())


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
           + "".join(f", {k} {printable(str(v))}" for k, v in found.filters.items()
                     if v not in (None, []) and k != "pairs")]
    out.append("summary (table, kind, day: count):")
    for (table_name, kind, day), count in sorted(found.summary.items()):
        out.append(f"  {table_name:<20} {kind:<22} {day}  {number(count, locale)}")
    if found.total > len(found.entries):
        out.append(f"the last {number(len(found.entries), locale)} entries (raise --limit for more):")
    for e in found.entries:
        where = f" at {printable(str(e.position))}" if e.position not in (None, "") else ""
        txid = f" txid {printable(str(e.txid))}" if e.txid else ""
        why = f" error: {printable(e.error)}" if e.error else ""
        out.append(f"  {moment(e.at, locale)}  {e.pair}  {e.target_table} ({_key(tuple(e.key), locale)})  {e.op} "
                   f"[{e.reason}]{where}{txid}  {_changes(e, lambda v: shown(v, locale))}{why}")
    return "\n".join(out) + "\n"


def _audit_csv(found: AuditTrail) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "at", "pair", "source_table", "target_table", "op", "reason", "key", "source_position",
                     "source_txid", "committed_at", "changes", "error"])
    for e in found.entries:
        writer.writerow([e.id, e.at.isoformat(), e.pair, e.source_table, e.target_table, e.op, e.reason,
                         ", ".join(map(str, e.key)), dumps(e.position), e.txid or "",
                         e.committed_at.isoformat() if e.committed_at else "", _changes(e, raw), e.error or ""])
    return buffer.getvalue()


def _audit_html(found: AuditTrail, locale: str) -> str:
    nb = locale == "nb"
    body = ["<h2>" + ("Sammendrag" if nb else "Summary") + "</h2>" + table(
        ["Tabell", "Type", "Dag", "Antall"] if nb else ["Table", "Kind", "Day", "Count"],
        [f"<tr><td>{html.escape(t)}</td><td>{html.escape(kind)}</td><td>{day}</td>{cell(count, number(count, locale))}"
         "</tr>" for (t, kind, day), count in sorted(found.summary.items())])]
    rows = []
    for e in found.entries:
        css = "missing" if e.reason in ("parked", "discarded") else "extra" if e.reason == "repair" else ""
        changed = html.escape(_changes(e, lambda v: shown(v, locale))) + (f"<br><mark>{html.escape(e.error)}</mark>" if e.error else "")
        rows.append(f'<tr class="{css}"><td>{moment(e.at, locale)}</td><td>{html.escape(e.pair)}</td>'
                    f"<td>{html.escape(e.target_table)}</td><td>{html.escape(', '.join(map(str, e.key)))}</td>"
                    f"<td>{html.escape(e.op)}</td><td>{html.escape(e.reason)}</td>"
                    f"<td>{html.escape(dumps(e.position) if e.position is not None else '')}</td><td>{changed}</td></tr>")
    heads = (["Tid (norsk tid)", "Par", "Tabell", "Nøkkel", "Operasjon", "Årsak", "Kildeposisjon", "Endret"] if nb else
             ["Time (UTC)", "Pair", "Table", "Key", "Op", "Reason", "Source position", "Changed"])
    body.append("<h2>" + ("Endringer" if nb else "Entries") + "</h2>" + table(heads, rows))
    meta = (f"{number(found.total, locale)} {'oppføringer' if nb else 'entries'}"
            + "".join(f" · {html.escape(str(k))}: {html.escape(str(v))}" for k, v in found.filters.items()
                      if v not in (None, [])))
    return _html_page("Revisjonsspor" if nb else "Audit trail", meta, body, found.provenance, locale)
