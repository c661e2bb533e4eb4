"""One database of any kind as the suite uses it: statements in one transaction, rows as canonical values.

Canonical values make rows from different databases comparable without hiding a change: a
Decimal is compared by value (``1.50`` = ``1.5``), a timestamp as an instant in UTC, a boolean
as a bool (SQLite and MySQL store 0/1), bytes as bytes. Anything else is compared as it is.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import sqlite3
from decimal import Decimal

import psycopg
import pymysql
import sqlalchemy as sa

UTC = dt.timezone.utc
_EXACT = decimal.Context(prec=100)  # normalize() rounds to the context's precision: never round here
COLUMNS = ("id", "amount", "at", "day", "note", "raw", "flag", "updated_at", "deleted")

# The table every scenario uses, per dialect: every type the suite checks, plus the change-time and
# soft-delete columns timestamp capture polls (other capture modes just copy them). SQLite keeps a
# NUMERIC or DECIMAL value as a 64-bit float (a target refuses longer amounts), so it declares an
# exact amount TEXT, as the README advises.
DIALECTS = {
    "sqlite": dict(
        ddl="CREATE TABLE items (id INTEGER PRIMARY KEY, amount {amount}, at DATETIME, day DATE, note {note}, "
            "raw BLOB, flag BOOLEAN, updated_at DATETIME NOT NULL, deleted BOOLEAN NOT NULL DEFAULT 0)",
        now="strftime('%Y-%m-%d %H:%M:%f', 'now')", amount={"source": "TEXT", "target": "TEXT"},
        # No ALTER COLUMN: the table is made again with the wider type, as a DBA does in SQLite.
        widen_note=["CREATE TABLE items_wide AS SELECT * FROM items", "DROP TABLE items",
                    "{ddl}", "INSERT INTO items SELECT * FROM items_wide", "DROP TABLE items_wide"]),
    "postgresql": dict(
        ddl="CREATE TABLE items (id BIGINT PRIMARY KEY, amount {amount}, at TIMESTAMPTZ, day DATE, "
            "note {note}, raw BYTEA, flag BOOLEAN, updated_at TIMESTAMPTZ NOT NULL, "
            "deleted BOOLEAN NOT NULL DEFAULT false)",
        now="now()", amount={"source": "NUMERIC(30,10)", "target": "NUMERIC(30,10)"},
        widen_note=["ALTER TABLE items ALTER COLUMN note TYPE TEXT"]),
    "mysql": dict(
        ddl="CREATE TABLE items (id BIGINT PRIMARY KEY, amount {amount}, at TIMESTAMP(6) NULL, day DATE, "
            "note {note}, raw BLOB, flag BOOLEAN, updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
            "deleted BOOLEAN NOT NULL DEFAULT false) ENGINE=InnoDB",
        now="NOW(6)", amount={"source": "DECIMAL(30,10)", "target": "DECIMAL(30,10)"},
        widen_note=["ALTER TABLE items MODIFY note TEXT"]),
}


class Database:
    """A database of one kind at one URL (a plain URL, as a user writes it in the config). A kind
    ``odbc-<dialect>`` is that database reached through ODBC: ``url`` is the ODBC URL the config
    gives cdc-sync, ``native_url`` the one the suite's own statements go by."""

    def __init__(self, kind: str, url: str, native_url: str | None = None):
        self.kind, self.url = kind, url
        self.dialect = kind.removeprefix("odbc-")
        self.native_url = native_url or url

    @property
    def now(self) -> str:
        """The SQL expression for the database's clock (timestamp capture never passes it)."""
        return DIALECTS[self.dialect]["now"]

    def create_items(self, role: str, note: str = "TEXT") -> None:
        """Create the suite's table as a ``role`` ('source' or 'target') declares it; ``note`` the note
        column's type (a short VARCHAR makes a target refuse a long note)."""
        dialect = DIALECTS[self.dialect]
        self.execute(dialect["ddl"].format(amount=dialect["amount"][role], note=note))

    def widen_note(self) -> None:
        """The DBA's fix for a note column too short for a row: the column made TEXT, rows kept."""
        dialect = DIALECTS[self.dialect]
        ddl = dialect["ddl"].format(amount=dialect["amount"]["target"], note="TEXT")
        self.transaction([(statement.format(ddl=ddl), None) for statement in dialect["widen_note"]])

    def execute(self, statement: str, params=None) -> list:
        """One statement in its own transaction; the rows it returns."""
        return self.transaction([(statement, params)])[0]

    def transaction(self, statements: list[tuple[str, object]]) -> list[list]:
        """Statements (with %s parameters) in ONE transaction; each one's rows."""
        runners = {"sqlite": self._sqlite, "postgresql": self._postgresql, "mysql": self._mysql}
        if self.dialect not in runners:  # a new adapter adds how its driver runs one transaction here
            raise NotImplementedError(f"tests/compliance/databases.py: no transaction runner for {self.kind}")
        return runners[self.dialect](statements)

    @contextlib.contextmanager
    def watching(self, statement: str):
        """A function giving the first value ``statement`` returns now, on one connection kept open
        (autocommit) for the block: a test polls progress without a connection per look."""
        if self.dialect == "sqlite":
            conn = sqlite3.connect(self.native_url.removeprefix("sqlite:///"), timeout=30, isolation_level=None)
        elif self.dialect == "postgresql":
            conn = psycopg.connect(self.native_url, autocommit=True)
        else:
            parts = sa.engine.make_url(self.native_url)
            conn = pymysql.connect(host=parts.host, port=parts.port, user=parts.username, autocommit=True,
                                   password=parts.password or "", database=parts.database)
        try:
            def look():
                cursor = conn.cursor()
                cursor.execute(statement)
                return cursor.fetchone()[0]
            yield look
        finally:
            conn.close()

    def rows(self, where: str = "") -> list[tuple]:
        """The items table in key order, as canonical values."""
        found = self.execute(f"SELECT {', '.join(COLUMNS)} FROM items {where} ORDER BY id")
        return [canonical(row) for row in found]

    def live_rows(self) -> list[tuple]:
        """The rows a target must hold: those not soft-deleted."""
        return [row for row in self.rows() if not row[-1]]

    def audit(self, where: str = "op <> 'snapshot' AND decision NOT IN ('parked', 'held')") -> list[tuple]:
        """The pair's audit rows (op, key, reason, after, source_position, source_txid) in apply order."""
        return [tuple(r) for r in self.execute(
            "SELECT op, " + self.quote("key") + ", reason, " + self.quote("after") +
            f", source_position, source_txid FROM cdc_audit_log WHERE {where} ORDER BY id")]

    def quote(self, name: str) -> str:
        return f"`{name}`" if self.dialect == "mysql" else f'"{name}"'

    def _sqlite(self, statements):
        conn = sqlite3.connect(self.native_url.removeprefix("sqlite:///"), timeout=30)
        try:
            with conn:
                return [conn.execute(s.replace("%s", "?"), tuple(_sqlite_value(v) for v in p or ())).fetchall()
                        for s, p in statements]
        finally:
            conn.close()

    def _postgresql(self, statements):
        with psycopg.connect(self.native_url) as conn:
            out = []
            for statement, params in statements:
                cursor = conn.execute(statement, params)
                out.append(cursor.fetchall() if cursor.description else [])
            return out

    def _mysql(self, statements):
        parts = sa.engine.make_url(self.native_url)
        conn = pymysql.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password or "",
                               database=parts.database, charset="utf8mb4")
        try:
            with conn.cursor() as cursor:
                cursor.execute("SET time_zone = '+00:00'")
                out = []
                for statement, params in statements:
                    cursor.execute(statement, tuple(_mysql_value(v) for v in params) if params else None)
                    out.append(list(cursor.fetchall()) if cursor.description else [])
            conn.commit()
            return out
        finally:
            conn.close()


def _sqlite_value(value):
    """A parameter as a SQLite application stores it: exact text for amounts and times."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat(sep=" ") if isinstance(value, dt.datetime) else value.isoformat()
    return value


def _mysql_value(value):
    """A parameter as MySQL takes it: PyMySQL drops a datetime's zone, so send the UTC wall clock
    (the session's time_zone is UTC)."""
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).replace(tzinfo=None)
    return value


def canonical(row: tuple) -> tuple:
    """One row of COLUMNS as comparable values."""
    return tuple(CANONICAL.get(name, _same)(value) for name, value in zip(COLUMNS, row))


def _same(value):
    return value


def _decimal(value):
    if value is None:
        return None
    return Decimal(repr(value) if isinstance(value, float) else str(value)).normalize(_EXACT)


def _instant(value):
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _date(value):
    if isinstance(value, str):
        return dt.date.fromisoformat(value)
    assert value is None or type(value) is dt.date, f"a date column gave {value!r}"
    return value


def _bool(value):
    if value is None:
        return None
    assert value in (0, 1, True, False), f"a boolean column gave {value!r}"
    return bool(value)


def _bytes(value):
    return None if value is None else bytes(value)


CANONICAL = {"amount": _decimal, "at": _instant, "day": _date, "raw": _bytes, "flag": _bool,
             "updated_at": _instant, "deleted": _bool}
