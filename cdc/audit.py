"""`cdc audit`: the trail of what was applied, decided, parked, retried, discarded and repaired.

Reads the target's ``cdc_audit_log``: one row per decision (a change applied, a conflict and how
its policy decided it, a change parked or held, retried, discarded; a snapshot chunk; a repair),
with the source position and transaction, before and after images, the policy and why. A summary
(counts per table, kind and day) comes first; with ``--key`` the list is that row's whole
history, oldest first. (Dead letters parked before state version 0004 have no audit row: `cdc
dead-letters list` shows them.)
"""

from __future__ import annotations

import csv

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from . import state
from .changes import loads
from .errors import ConfigError


@dataclass
class AuditEntry:
    id: int
    at: dt.datetime
    pair: str
    source_table: str
    target_table: str
    op: str
    reason: str  # change | snapshot | repair | retry | resolve
    key: list
    before: dict | None
    after: dict | None
    position: Any = None
    txid: str | None = None
    committed_at: dt.datetime | None = None
    error: str | None = None  # why, for a decision other than applied (the audit row's detail)
    decision: str = "applied"  # applied | conflict | skipped | parked | held | retried | discarded | resolved
    policy: str | None = None  # the conflict policy or rule that decided

    @property
    def kind(self) -> str:
        """The op, with the reason and decision where they are not the plain case: ``update (conflict:
        target_wins)``, ``insert (repair)``."""
        notes = [n for n in (None if self.reason in ("change", self.op) else self.reason, self._decided()) if n]
        return f"{self.op} ({', '.join(notes)})" if notes else self.op

    @property
    def decided(self) -> str:
        """The op with the decision where it is not applied: ``update (conflict: target_wins)``."""
        decided = self._decided()
        return f"{self.op} ({decided})" if decided else self.op

    def _decided(self) -> str | None:
        if self.decision == "applied":
            return None
        return f"{self.decision}: {self.policy}" if self.policy else self.decision

    @property
    def changed(self) -> dict[str, tuple[Any, Any]]:
        """Columns whose value differs between before and after (every column of an insert/delete)."""
        before, after = self.before or {}, self.after or {}
        return {c: (before.get(c), after.get(c)) for c in list(after) + [c for c in before if c not in after]
                if before.get(c) != after.get(c)}


@dataclass
class AuditTrail:
    filters: dict
    summary: Counter = field(default_factory=Counter)  # (target table, kind, day) -> count
    entries: list[AuditEntry] = field(default_factory=list)
    total: int = 0
    limit: int = 1000
    #: Who made the report, from what, as of which checkpoints (cdc.provenance); set by cdc.commands.
    provenance: Any = None


def parse_when(text: str | None, option: str) -> dt.datetime | None:
    """An ISO date or date-time (UTC unless it names an offset)."""
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected a date (2024-05-31) or date-time (2024-05-31T14:00)") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _key_matches(stored: list, wanted: list[str] | None) -> bool:
    """Whether a stored key is ``wanted``, or starts with it: a journal's entries are keyed by the
    source key and entry_no, so `--key 7` lists every entry of source row 7."""
    return wanted is None or (len(stored) >= len(wanted) and [str(v) for v in stored[:len(wanted)]] == wanted)


def _key_values(key: str) -> list[str]:
    """``--key`` as values: comma-separated, each trimmed; a value holding a comma or spaces of its
    own is written in double quotes, as in CSV (``--key '"Berg, Ola",7'``)."""
    if '"' in key:
        return next(csv.reader([key], skipinitialspace=True))
    return [part.strip() for part in key.split(",")]


def trail(target: Any, *, pairs: list[str] | None = None, table: str | None = None, key: str | None = None,
          since: str | None = None, until: str | None = None, op: str | None = None,
          limit: int = 1000) -> AuditTrail:
    """The audit entries in ``target``'s state tables matching the filters (the list capped at
    ``limit``; counts are exact)."""
    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    wanted = None if key is None else _key_values(key)
    result = AuditTrail({"pairs": pairs, "table": table, "key": key, "since": since, "until": until, "op": op},
                        limit=limit)
    log = state.audit_log
    with target.reading() as conn:
        state.ensure_current(conn)
        query = sa.select(log).order_by(log.c.id)
        if pairs is not None:
            query = query.where(log.c.pair.in_(pairs))
        if op is not None:
            query = query.where(log.c.op == op)
        if table is not None:
            query = query.where(sa.or_(log.c.target_table == table, log.c.source_table == table))
        if start is not None:
            query = query.where(log.c.applied_at >= start)
        if end is not None:
            query = query.where(log.c.applied_at < end)
        for part in wanted or []:
            query = query.where(log.c.key.contains(part, autoescape=True))
        entries = []
        # The target tables' column types, read before the rows stream: a query between two streamed
        # rows ended MySQL's unbuffered result early, without a word (1 entry listed of 41).
        typed = _Images(conn, conn.execute(query.with_only_columns(log.c.target_table).distinct()
                                           .order_by(None)).scalars().all())
        for row in conn.execution_options(stream_results=True).execute(query):
            stored = loads(row.key)
            if not _key_matches(stored, wanted):
                continue
            entries.append(AuditEntry(row.id, _aware(row.applied_at), row.pair, row.source_table, row.target_table,
                                      row.op, row.reason, stored, typed(row.target_table, loads(row.before)),
                                      typed(row.target_table, loads(row.after)), loads(row.source_position),
                                      row.source_txid, _aware(row.committed_at), row.detail,
                                      row.decision or "applied", row.policy))
    entries.sort(key=lambda e: (e.at, e.id))
    for entry in entries:
        result.summary[(entry.target_table, entry.kind, entry.at.date().isoformat())] += 1
    result.total = len(entries)
    result.entries = entries[:limit] if key is not None else entries[-limit:]
    return result


class _Images:
    """Audit images with their numbers typed again: JSON carries a decimal as text (so no reader
    makes it a float), and only the target column's type tells ``'12.50'`` the amount from
    ``'0012.50'`` the text. A column the target table no longer has stays as stored."""

    def __init__(self, conn: sa.Connection, tables: list[str]):
        self.conn = conn
        self.numeric: dict[str, set[str]] = {}
        for table in tables:
            self._numeric(table)

    def __call__(self, table: str, image: dict | None) -> dict | None:
        if not image:
            return image
        numeric = self._numeric(table)
        return {c: _decimal(v) if c in numeric else v for c, v in image.items()}

    def _numeric(self, table: str) -> set[str]:
        if table not in self.numeric:
            inspector = sa.inspect(self.conn)
            columns = inspector.get_columns(table) if inspector.has_table(table) else []
            self.numeric[table] = {c["name"] for c in columns if isinstance(c["type"], sa.Numeric)
                                   and not isinstance(c["type"], sa.Float)}
        return self.numeric[table]


def _decimal(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return Decimal(value)
    except InvalidOperation:
        return value


def checkpoints(target: Any, pairs: list[str]) -> dict[str, Any]:
    """Pair -> its checkpoint as stored (the position, the snapshot in progress, changes applied,
    when it was written): what the trail is as of."""
    result = {}
    with target.reading() as conn:
        for name in pairs:
            checkpoint = state.read_checkpoint(conn, name)
            result[name] = None if checkpoint is None else {
                "position": checkpoint.position, "snapshot": checkpoint.snapshot,
                "changes_applied": checkpoint.changes_applied,
                "updated_at": checkpoint.updated_at.isoformat() if checkpoint.updated_at else None}
    return result


def merged(trails: list[AuditTrail]) -> AuditTrail:
    """Several targets' trails as one (a config's pairs may write to different targets)."""
    if len(trails) == 1:
        return trails[0]
    result = AuditTrail(trails[0].filters, limit=trails[0].limit)
    for one in trails:
        result.summary.update(one.summary)
        result.entries += one.entries
        result.total += one.total
    result.entries.sort(key=lambda e: (e.at, e.id))
    return result
