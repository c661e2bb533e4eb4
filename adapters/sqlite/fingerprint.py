"""Reconciliation fingerprints inside SQLite, through registered functions (see cdc/reconcile.py).

SQLite has no MD5 and its columns hold values of any storage class, so the canonical text of a
value is made by a Python function registered on every connection: the adapter's reader, the fit
to the target column's type and the canonical text, exactly as the streamed path does them; MD5
and the exact sum of 60-bit digests (SQLite's sum() would overflow) are registered too. SQLite
then scans, groups and filters by bucket itself, without building a row dict per row in Python.
"""

from __future__ import annotations

import hashlib
import sqlite3
from typing import Any, Callable

import sqlalchemy as sa

from .sql import quote


class _Sum:
    """An exact sum (Python ints): registered as the aggregate cdc_sum."""

    def __init__(self):
        self.total = 0

    def step(self, value: int | None) -> None:
        if value is not None:
            self.total += value

    def finalize(self) -> str:
        return str(self.total)  # as text: SQLite integers stop at 2^63


class SqliteFingerprints:
    families = ("md5",)

    def __init__(self, reads: Any):
        self.reads = reads
        self._specs: list[Callable[[Any], str | None]] = []

    def read_only(self, engine: sa.Engine) -> None:
        """Every later transaction on ``engine`` only reads: the connection's authorizer refuses any
        statement that would change the file (PRAGMA query_only would do the same, but a target's
        connections begin with BEGIN IMMEDIATE, which query_only refuses)."""
        sa.event.listen(engine, "begin", lambda conn: conn.connection.dbapi_connection.set_authorizer(_reads_only))

    def register(self, dbapi_connection: Any) -> None:
        """Make the functions known to one new SQLite connection."""
        dbapi_connection.create_function("cdc_canon", 2, self._canon, deterministic=True)
        dbapi_connection.create_function("cdc_md5_bucket", 2, _md5_bucket, deterministic=True)
        dbapi_connection.create_function("cdc_md5_digest", 1, _md5_digest, deterministic=True)
        dbapi_connection.create_aggregate("cdc_sum", 1, _Sum)

    def _canon(self, value: Any, spec: int) -> str | None:
        return self._specs[spec](value)

    def canonical(self, name: str, column: sa.Column, as_type: sa.types.TypeEngine) -> str | None:
        from cdc import values
        from cdc.errors import TransformError
        from cdc.canonical import canonical

        read = self.reads.reader(column)
        target = sa.Column("value", as_type)

        def canon(value: Any) -> str | None:
            value = read(value)
            try:
                value = values.fit(value, target)
            except TransformError:
                pass  # compared as it is, as the streamed path does
            return canonical(value, target)

        self._specs.append(canon)
        return f"cdc_canon({quote(name)}, {len(self._specs) - 1})"

    def month(self, name: str, column: sa.Column) -> str | None:
        return None  # control totals of SQLite tables are summed streamed

    def part(self, text: str, prefixed: bool) -> str:
        return f"coalesce(length({text}) || ':' || {text}, '\\N')" if prefixed else f"coalesce({text}, '\\N')"

    def join(self, parts: list[str]) -> str:
        return " || '|' || ".join(parts)

    def bucket(self, key_text: str, buckets: int, family: str = "md5") -> str:
        return f"cdc_md5_bucket({key_text}, {int(buckets)})"

    def int_bucket(self, name: str, buckets: int) -> str:
        return f"((({quote(name)} % {int(buckets)}) + {int(buckets)}) % {int(buckets)})"

    def digest(self, row_text: str, family: str = "md5") -> str:
        return f"cdc_md5_digest({row_text})"

    def total(self, digest: str) -> str:
        return f"cdc_sum({digest})"

    def usable(self, conn: sa.Connection) -> bool:
        return True


#: The authorizer actions that change a database file (sqlite3's SQLITE_* action codes).
_WRITES = frozenset(getattr(sqlite3, name) for name in dir(sqlite3) if name.startswith((
    "SQLITE_CREATE_", "SQLITE_DROP_")) or name in (
    "SQLITE_INSERT", "SQLITE_UPDATE", "SQLITE_DELETE", "SQLITE_ALTER_TABLE", "SQLITE_ATTACH", "SQLITE_DETACH",
    "SQLITE_REINDEX", "SQLITE_ANALYZE"))


def _reads_only(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_DENY if action in _WRITES else sqlite3.SQLITE_OK


def _md5_bucket(text: str, buckets: int) -> int:
    return int(hashlib.md5(text.encode()).hexdigest()[:8], 16) % buckets


def _md5_digest(text: str) -> int:
    return int(hashlib.md5(text.encode()).hexdigest()[:15], 16)
