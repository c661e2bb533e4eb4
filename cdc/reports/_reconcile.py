"""The reconciliation report as text, JSON, CSV and HTML."""

from __future__ import annotations

import csv
import html
import io
import re
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._html import cell, html_page, table
from ._provenance import rendered
from ._values import key_text, moment, number, printable, raw, shown

if TYPE_CHECKING:  # cdc.reconcile records its runs with reconcile_dict: no import back at run time
    from ..reconcile import ReconcileReport, RowDifference, TableReport


def reconcile_report(report: ReconcileReport, fmt: str, locale: str = "en") -> str:
    return rendered(fmt, report.provenance, locale, as_dict=lambda: reconcile_dict(report),
                    csv_body=lambda: _reconcile_csv(report), html_page=lambda: _reconcile_html(report, locale),
                    text_body=lambda: _reconcile_text(report, locale))


def reconcile_dict(report: ReconcileReport) -> dict:
    """The report as plain JSON-able data (values as the change model encodes them)."""
    return {
        "pair": report.pair, "equal": report.equal, "started_at": report.started_at.isoformat(),
        "finished_at": report.finished_at.isoformat() if report.finished_at else None,
        "checkpoint": report.checkpoint, "pending": report.pending, "limit": report.limit, "repair": report.repair,
        "run_id": report.run_id, "provenance": report.provenance.as_dict() if report.provenance else None,
        "tables": [{
            "source_table": t.source_table, "target_table": t.target_table, "equal": t.equal,
            "source_rows": t.source_rows, "target_rows": t.target_rows, "missing": t.missing, "extra": t.extra,
            "different": t.different, "settled": t.settled, "unmappable": t.unmappable, "methods": t.methods,
            "counted_from_fingerprints": t.counted_from_fingerprints,
            "seconds": round(t.seconds, 3), "totals": t.totals, "totals_sum": t.totals_sum,
            "rows": [_row_dict(r) for r in t.rows],
        } for t in report.tables],
    }


def _row_dict(row: RowDifference) -> dict:
    result = {"kind": row.kind, "key": list(row.key),
              "columns": {c: {"source": s, "target": v} for c, (s, v) in row.columns.items()}}
    if row.kind == "unmappable":
        result.update(column=row.column, error=row.error)
    if row.note:
        result["note"] = row.note
    return result


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
        return f"    differs  ({key_text(row.key, locale)})  {cols}"
    if row.kind == "unmappable":
        return f"    cannot map source row ({key_text(row.key, locale)})  {printable(row.error or '')}"
    note = f"  ({printable(row.note)})" if row.note else ""
    return f"    {'missing' if row.kind == 'missing' else 'extra  '}  ({key_text(row.key, locale)}){note}"


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
    if not repair.get("dry_run") and "applied" in repair and (repair.get("parked") or repair.get("left")):
        out[0] = (f"repair planned {repair['upserts']} upsert(s) and {repair['deletes']} delete(s){kept}: "
                  f"{repair['applied']} written, {repair['parked']} parked in dead letters, {repair['left']} left as "
                  "they are by the tables' conflict policies or held keys (see `cdc audit`)")
    for step in repair.get("plan", []):
        key = key_text(tuple(step["key"]), locale)
        if step["op"] == "upsert":
            values = ", ".join(f"{c}={shown(v, locale)}" for c, v in step["source_row"].items())
            out.append(f"    upsert {step['table']} ({key})  from source {step['source_table']} "
                       f"({key_text(tuple(step['source_key']), locale)}): {values}")
        else:
            out.append(f"    delete {step['table']} ({key})  {printable(step['why'])}")
    for kept_row in repair.get("kept", []):
        out.append(f"    keep   {kept_row['table']} ({key_text(tuple(kept_row['key']), locale)})  "
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
    return html_page(("Avstemming" if nb else "Reconciliation") + f": {report.pair}", meta, body,
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
        key = html.escape(key_text(row.key, locale))
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
                    f"<td>{html.escape(key_text(tuple(step['key']), locale))}</td><td>{html.escape(source)}</td></tr>")
    for kept in repair.get("kept", []):
        rows.append(f'<tr class="extra"><td>keep</td><td>{html.escape(kept["table"])}</td>'
                    f"<td>{html.escape(key_text(tuple(kept['key']), locale))}</td>"
                    f"<td>{html.escape(kept['why'])}</td></tr>")
    title = ("Retting (plan)" if nb else "Repair (plan)") if repair.get("dry_run") else ("Retting" if nb else "Repair")
    heads = ["Operasjon", "Tabell", "Nøkkel", "Kilderad / grunn"] if nb else ["Op", "Table", "Key", "Source row / why"]
    summary = (f"<p>{repair['upserts']} upsert, {repair['deletes']} delete"
               + (f", {repair.get('applied')} {'utført' if nb else 'applied'}" if "applied" in repair else "") + "</p>")
    return [f"<h2>{title}</h2>", summary, table(heads, rows)]
