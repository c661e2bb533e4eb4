"""The rows of cdc_dead_letters and cdc_conflicts as records: listed, found by id, their status changed."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from .. import state
from ..changes import dumps, loads
from ..config import Pair, load_config
from ..errors import ConfigError
from ..pipeline import open_target

#: Dead letters still waiting: parked (the head of its key's queue) or held (behind one).
OPEN_LETTERS = ("parked", "held")
LETTER_STATUSES = ("parked", "held", "retried", "discarded", "resolved")
CONFLICT_STATUSES = ("open", "resolved")


@dataclass
class Letter:
    """One row of cdc_dead_letters; ``change`` is the change as the source gave it (JSON values)."""

    id: int
    pair: str
    source_table: str
    target_table: str
    op: str
    key: list
    kind: str
    status: str
    blocked_by: str | None
    error: str
    column: str | None
    created_at: dt.datetime | None
    resolved_at: dt.datetime | None
    source_txid: str | None
    source_position: Any
    note: str | None
    change: dict

    @property
    def key_text(self) -> str:
        """The key as stored: what holds, letters and conflicts of one key share."""
        return _key_text(self.key)

    def as_dict(self, full: bool = False) -> dict:
        """Plain data for --json: without the change's images unless ``full``."""
        data = asdict(self)
        for name in ("created_at", "resolved_at"):
            data[name] = _iso(data[name])
        if not full:
            del data["change"]
        return data


@dataclass
class Conflict:
    """One row of cdc_conflicts: the change parked under policy ``manual`` and the target row it met."""

    id: int
    pair: str
    source_table: str | None
    target_table: str
    key: list
    source_key: list | None
    policy: str
    status: str
    created_at: dt.datetime | None
    resolved_at: dt.datetime | None
    resolution: str | None
    source_position: Any
    note: str | None
    change: dict
    target_row: dict | None

    @property
    def key_text(self) -> str:
        """The source key as stored: the key later changes are held by."""
        return _key_text(self.source_key if self.source_key is not None else self.key)

    def as_dict(self, full: bool = False) -> dict:
        data = asdict(self)
        for name in ("created_at", "resolved_at"):
            data[name] = _iso(data[name])
        if not full:
            del data["change"], data["target_row"]
        return data


def _key_text(key: list) -> str:
    return dumps(list(key))


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else state._store.aware(value).isoformat()


def letter_of(row: Any) -> Letter:
    return Letter(row.id, row.pair, row.source_table, row.target_table, row.op, loads(row.key), row.kind, row.status,
                  row.blocked_by, row.error, row.column_name, state._store.aware(row.created_at),
                  state._store.aware(row.resolved_at), row.source_txid, loads(row.source_position), row.note,
                  loads(row.change) or {})


def conflict_of(row: Any) -> Conflict:
    return Conflict(row.id, row.pair, row.source_table, row.target_table, loads(row.key), loads(row.source_key),
                    row.policy, row.status, state._store.aware(row.created_at), state._store.aware(row.resolved_at),
                    row.resolution, loads(row.source_position), row.note, loads(row.change) or {},
                    loads(row.target_row))


def read_letters(conn: sa.Connection, pairs: list[str], *, table: str | None = None,
                 statuses: tuple[str, ...] | None = OPEN_LETTERS, ids: list[int] | None = None,
                 key: tuple[str, str] | None = None) -> list[Letter]:
    """The dead letters of ``pairs`` in id order: of ``table`` (source or target name), with one of
    ``statuses`` (None: any), these ``ids``, or of one ``key`` (source table, key as stored)."""
    letters = state.dead_letters
    query = sa.select(letters).where(letters.c.pair.in_(pairs)).order_by(letters.c.id)
    if table is not None:
        query = query.where(sa.or_(letters.c.source_table == table, letters.c.target_table == table))
    if key is not None:
        query = query.where(letters.c.source_table == key[0], letters.c.key == key[1])
    if statuses is not None:
        query = query.where(letters.c.status.in_(statuses))
    if ids is not None:
        query = query.where(letters.c.id.in_(ids))
    return [letter_of(row) for row in conn.execute(query)]


def read_conflicts(conn: sa.Connection, pairs: list[str], *, table: str | None = None,
                   statuses: tuple[str, ...] | None = ("open",), ids: list[int] | None = None,
                   key: tuple[str, str] | None = None) -> list[Conflict]:
    """The conflicts of ``pairs`` in id order, filtered as read_letters filters letters."""
    conflicts = state.conflicts
    query = sa.select(conflicts).where(conflicts.c.pair.in_(pairs)).order_by(conflicts.c.id)
    if table is not None:
        query = query.where(sa.or_(conflicts.c.source_table == table, conflicts.c.target_table == table))
    if key is not None:
        query = query.where(conflicts.c.source_table == key[0], conflicts.c.source_key == key[1])
    if statuses is not None:
        query = query.where(conflicts.c.status.in_(statuses))
    if ids is not None:
        query = query.where(conflicts.c.id.in_(ids))
    return [conflict_of(row) for row in conn.execute(query)]


def by_target(config_path: str, pair: str | None) -> list[list[Pair]]:
    """The config's pairs (or the one named), grouped by the target database they write to: ids
    are numbered per target database."""
    groups: dict[str, list[Pair]] = {}
    for chosen in load_config(config_path).select(pair):
        groups.setdefault(chosen.target.url, []).append(chosen)
    return list(groups.values())


def collect(config_path: str, pair: str | None, read) -> list:
    """``read(conn, pair names)`` on each target database of the config's pairs, results joined."""
    found: list = []
    for pairs in by_target(config_path, pair):
        target = open_target(pairs[0].target)
        try:
            with target.reading() as conn:
                state.ensure_current(conn)
                found += read(conn, [p.name for p in pairs])
        finally:
            target.close()
    return found


def find(config_path: str, pair: str | None, what: str, number: int) -> tuple[Pair, Any]:
    """The pair and the record of dead letter (``what`` "letter") or conflict ``number``;
    ConfigError (exit 2) when no target of the config's pairs has it, or several do."""
    found = []
    for pairs in by_target(config_path, pair):
        target = open_target(pairs[0].target)
        try:
            with target.reading() as conn:
                state.ensure_current(conn)
                reader = read_letters if what == "letter" else read_conflicts
                for record in reader(conn, [p.name for p in pairs], statuses=None, ids=[number]):
                    found.append((next(p for p in pairs if p.name == record.pair), record))
        finally:
            target.close()
    name = "dead letter" if what == "letter" else "conflict"
    if not found:
        scope = f"pair {pair}" if pair else "the config's pairs"
        lister = "dead-letters" if what == "letter" else "conflicts"
        raise ConfigError(f"{config_path}: {scope} have no {name} {number} (`cdc {lister} list CONFIG --status all` "
                          "lists them)")
    if len(found) > 1:
        raise ConfigError(f"{config_path}: {name} {number} exists in the targets of pairs "
                          f"{', '.join(p.name for p, _ in found)}: name one with --pair")
    return found[0]
