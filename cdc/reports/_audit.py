"""The audit trail as text, JSON, CSV and HTML."""

from __future__ import annotations

import csv
import html
import io
from typing import Any, Callable

from ..audit import AuditEntry, AuditTrail
from ..changes import dumps
from ._html import cell, html_page, table
from ._provenance import rendered
from ._values import key_text, moment, number, printable, raw, shown


def audit_report(found: AuditTrail, fmt: str, locale: str = "en") -> str:
    return rendered(fmt, found.provenance, locale, as_dict=lambda: audit_dict(found),
                    csv_body=lambda: _audit_csv(found), html_page=lambda: _audit_html(found, locale),
                    text_body=lambda: _audit_text(found, locale))


def audit_dict(found: AuditTrail) -> dict:
    return {
        "filters": found.filters, "total": found.total, "listed": len(found.entries),
        "summary": [{"table": t, "kind": k, "day": d, "count": n} for (t, k, d), n in sorted(found.summary.items())],
        "entries": [{"id": e.id, "at": e.at.isoformat(), "pair": e.pair, "source_table": e.source_table,
                     "target_table": e.target_table, "op": e.op, "reason": e.reason, "key": e.key,
                     "before": e.before, "after": e.after, "source_position": e.position, "source_txid": e.txid,
                     "committed_at": e.committed_at.isoformat() if e.committed_at else None, "decision": e.decision,
                     "policy": e.policy, "detail": e.error}
                    for e in found.entries],
    }


def _changes(entry: AuditEntry, show: Callable[[Any], str]) -> str:
    """What an entry changed, each value written by ``show``."""
    if entry.reason == "snapshot":
        return f"{(entry.after or {}).get('rows', '')} rows copied".strip()
    return "; ".join(f"{c}: {show(b)} -> {show(a)}" for c, (b, a) in entry.changed.items())


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
        why = f"  ({printable(e.error)})" if e.error else ""
        out.append(f"  {moment(e.at, locale)}  {e.pair}  {e.target_table} ({key_text(tuple(e.key), locale)})  {e.decided} "
                   f"[{e.reason}]{where}{txid}  {_changes(e, lambda v: shown(v, locale))}{why}")
    return "\n".join(out) + "\n"


def _audit_csv(found: AuditTrail) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "at", "pair", "source_table", "target_table", "op", "reason", "decision", "policy", "key",
                     "source_position", "source_txid", "committed_at", "changes", "detail"])
    for e in found.entries:
        writer.writerow([e.id, e.at.isoformat(), e.pair, e.source_table, e.target_table, e.op, e.reason, e.decision,
                         e.policy or "", ", ".join(map(str, e.key)), dumps(e.position), e.txid or "",
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
        css = ("missing" if e.decision in ("parked", "held", "discarded") else
               "extra" if e.reason == "repair" or e.decision == "conflict" else "")
        changed = html.escape(_changes(e, lambda v: shown(v, locale))) + (f"<br><mark>{html.escape(e.error)}</mark>" if e.error else "")
        rows.append(f'<tr class="{css}"><td>{moment(e.at, locale)}</td><td>{html.escape(e.pair)}</td>'
                    f"<td>{html.escape(e.target_table)}</td><td>{html.escape(', '.join(map(str, e.key)))}</td>"
                    f"<td>{html.escape(e.decided)}</td><td>{html.escape(e.reason)}</td>"
                    f"<td>{html.escape(dumps(e.position) if e.position is not None else '')}</td><td>{changed}</td></tr>")
    heads = (["Tid (norsk tid)", "Par", "Tabell", "Nøkkel", "Operasjon", "Årsak", "Kildeposisjon", "Endret"] if nb else
             ["Time (UTC)", "Pair", "Table", "Key", "Op", "Reason", "Source position", "Changed"])
    body.append("<h2>" + ("Endringer" if nb else "Entries") + "</h2>" + table(heads, rows))
    meta = (f"{number(found.total, locale)} {'oppføringer' if nb else 'entries'}"
            + "".join(f" · {html.escape(str(k))}: {html.escape(str(v))}" for k, v in found.filters.items()
                      if v not in (None, [])))
    return html_page("Revisjonsspor" if nb else "Audit trail", meta, body, found.provenance, locale)
