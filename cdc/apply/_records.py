"""The one shape of an audit row and of a dead letter, and how a part's records are written."""

from __future__ import annotations

import itertools
from typing import Any, Iterable

from ..changes import Row, dumps
from ..errors import RowError
from ..mapping import MappedChange
from . import _limits


def audit_rows(pair: str, done: list[MappedChange], reason: str, now: Any) -> list[dict]:
    """One audit row per change applied (a snapshot chunk: one per table, see snapshot_audit);
    a change the mapping filtered out applied nothing and has none."""
    if reason == "snapshot":
        return snapshot_audit(pair, done, now)
    rows = []
    position = txid = object()  # the changes of one transaction share these: encoded once
    for item in done:
        change = item.change
        if not item.ops and item.note is None:  # filtered out by the mapping (a journal's skip has a note)
            continue
        if change.position is not position or change.txid is not txid:
            position, txid = change.position, change.txid
            position_text, txid_text = dumps(position), None if txid is None else str(txid)
        before, after = _audit_images(item, reason)
        decision, policy, detail, found = item.note or (_DECISIONS.get(reason, "applied"), None, None, None)
        if found is not None:  # the target row as it was found: what the change really replaced
            before = {c: found.get(c) for c in item.mapping.target_columns}
        key = item.ops[-1].key if item.ops else list(change.key)
        rows.append(audit_row(pair, change.table, item.mapping.target, change.op, reason, dumps(key),
                              _json(before), _json(after), now, position_text, txid_text, change.committed_at,
                              decision, policy, detail))
    return rows


#: The decision an audit row of a change applied as mapped records, per reason.
_DECISIONS = {"retry": "retried", "resolve": "resolved"}


def parked_audit_rows(pair: str, parked: list, reason: str, now: Any) -> list[dict]:
    """One audit row per change parked (decision parked, or held behind an earlier one of its key),
    with the kind of refusal as its policy and the error as its detail."""
    rows = []
    for item, error in parked:
        change, mapping = item.change, item.mapping
        images = [image if image is None or reason == "repair" else mapping.image(image, change.key)
                  for image in (change.before, change.after)]
        decision = "held" if error.kind == "held" else "parked"
        rows.append(audit_row(pair, change.table, mapping.target, change.op, reason, dumps(list(change.key)),
                              _json(images[0]), _json(images[1]), now, dumps(change.position),
                              None if change.txid is None else str(change.txid), change.committed_at,
                              decision, None if error.kind == "error" else error.kind, str(error)))
    return rows


def audit_row(pair: str, source_table: str, target_table: str, op: str, reason: str, key: str,
              before: str | None, after: str | None, now: Any, position: str | None = None,
              txid: str | None = None, committed_at: Any = None, decision: str = "applied",
              policy: str | None = None, detail: str | None = None) -> dict:
    """The one shape of a row of cdc_audit_log (images and key already encoded as JSON)."""
    return {
        "pair": pair, "source_table": source_table, "target_table": target_table, "op": op, "reason": reason,
        "key": key, "before": before, "after": after, "source_position": position, "source_txid": txid,
        "committed_at": committed_at, "applied_at": now, "decision": decision, "policy": policy, "detail": detail,
    }


def snapshot_row(pair: str, source_table: str, target_table: str, last_key: list, summary: dict, now: Any) -> dict:
    """The audit row of one table's snapshot chunk: ``summary`` says how many rows and which keys."""
    return audit_row(pair, source_table, target_table, "snapshot", "snapshot", dumps(last_key), None,
                     dumps(summary), now)


def snapshot_audit(pair: str, done: list[MappedChange], now: Any) -> list[dict]:
    """One audit row per table and snapshot chunk: how many rows, first and last key."""
    rows = []
    for target, items in itertools.groupby(done, key=lambda m: m.mapping.target):
        items = list(items)
        first, last = list(items[0].change.key), list(items[-1].change.key)
        summary = {"rows": sum(1 for m in items if m.ops), "read": len(items), "first_key": first, "last_key": last}
        rows.append(snapshot_row(pair, items[0].change.table, target, last, summary, now))
    return rows


def _audit_images(item: MappedChange, reason: str) -> tuple[Row | None, Row | None]:
    """The change's before and after images as target rows, both through the pair's mapping: a
    column the mapping does not copy never reaches the target database, its audit log included.
    A repair's images are target rows already."""
    change = item.change
    if reason == "repair":
        return change.before, change.after
    last = item.ops[-1] if item.ops else None
    after = last.row if last is not None and last.op == "upsert" else (
        None if change.after is None else item.mapping.image(change.after, change.key))
    return item.before_image(), after


def dead_letter(pair: str, item: MappedChange, error: RowError, now: Any, reason: str = "change") -> dict:
    """The dead letter of a change that did not reach the target: its change (see change_record),
    why (``error``: its kind, and what a held change waits behind), held or parked."""
    change = item.change
    return {
        "pair": pair, "source_table": change.table, "target_table": item.mapping.target, "op": change.op,
        "key": dumps(list(change.key)), "error": str(error), "column_name": error.column,
        "change": change_record(item, reason), "source_position": dumps(change.position), "created_at": now,
        "kind": error.kind, "blocked_by": error.blocked_by, "status": "held" if error.kind == "held" else "parked",
        "source_txid": None if change.txid is None else str(change.txid),
    }


def change_record(item: MappedChange, reason: str = "change") -> str:
    """A change as dead letters and conflicts keep it (JSON): as the source gave it, with the source
    columns the mapping reads (all it needs to be mapped and applied again; a column the mapping
    does not copy stays out of the target database). A repair's images are target rows."""
    change = item.change
    read = None if reason == "repair" else item.mapping.read_columns()
    return dumps({"op": change.op, "table": change.table, "key": list(change.key),
                  "before": _only(change.before, read), "after": _only(change.after, read),
                  "position": change.position, "txid": change.txid})


def conflict_rows(pair: str, found: list, now: Any) -> list[dict]:
    """The cdc_conflicts rows of changes parked for a person to decide: (change, target row found)."""
    rows = []
    for item, row in found:
        change, op = item.change, item.ops[-1]
        rows.append({"pair": pair, "target_table": op.table, "key": dumps(list(op.key)),
                     "change": change_record(item), "target_row": _json(row), "policy": "manual", "status": "open",
                     "created_at": now, "source_table": change.table, "source_key": dumps(list(change.key)),
                     "source_position": dumps(change.position)})
    return rows


def write_records(target: Any, conn: Any, audit: list[dict], letters: list[dict], limit: int | None) -> None:
    """A part's audit rows and dead letters, in the apply transaction; under a statement ``limit``
    each is made to fit (its largest image values kept as length and SHA-256) and they go in
    statements that fit."""
    if limit is not None:
        audit = [_limits.fitted_audit_row(row, target.statement_size, limit) for row in audit]
        letters = [_limits.fitted_dead_letter(row, target.statement_size, limit, target.statement_limit_setting)
                   for row in letters]
    for part in in_statements(target, audit, limit):
        target.write_audit(conn, part)
    for part in in_statements(target, letters, limit):
        target.write_dead_letters(conn, part)


def in_statements(target: Any, rows: list[dict], limit: int | None) -> Iterable[list[dict]]:
    """``rows`` in parts that each fit one statement of ``target`` (its driver may split them further)."""
    if not rows:
        return []
    if limit is None or (target.driver_statement_bytes is not None and target.driver_statement_bytes <= limit):
        return [rows]
    return _limits.in_statements(rows, target.statement_size, limit)


def _only(row: Row | None, columns: frozenset[str] | None) -> Row | None:
    if row is None or columns is None or row.keys() <= columns:
        return row
    return {c: v for c, v in row.items() if c in columns}


def _json(row: Row | None) -> str | None:
    return None if row is None else dumps(row)
