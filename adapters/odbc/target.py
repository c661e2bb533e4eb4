"""Databases reached through ODBC as targets.

MySQL/MariaDB and SQLite keep their own adapter's target class (its upsert, DDL and doctor) with
``OdbcWrites`` in front; PostgreSQL through ODBC is the shared SQL target with PostgreSQL's upsert
(its own adapter's target is built on psycopg's COPY); SQL Server is ``MssqlTarget``: MERGE ... WITH
(HOLDLOCK), sent with pyodbc's fast_executemany.
"""

from __future__ import annotations

from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from cdc import state

from .._sql import SqlTarget, same
from .._sql.rows import key_in, plain_rows
from .._sql.target import READ_KEYS
from . import sql, types
from ._connect import fault

#: SQLSTATE classes of one row's values being refused: data exception, integrity constraint, a trigger's RAISE.
ROW_STATES = ("22", "23", "P0001")


def sqlstate(exc: sa.exc.DBAPIError) -> str:
    """The SQLSTATE pyodbc reports (its first argument), or ''."""
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], str) and len(args[0]) == 5 else ""


#: Rows one upsert or insert statement carries at most, and its parameters (MariaDB: 65,535; SQLite: 32,766).
ROWS_PER_STATEMENT = 100
MAX_PARAMETERS = 30000
#: Bytes of values one such statement carries at most (about; under MariaDB's smallest max_allowed_packet).
STATEMENT_BYTES = 1 << 20


class OdbcWrites:
    """Values bound and errors classified as pyodbc gives them; put before a dialect's target class."""

    dialect = ""
    binds_own_values = True
    #: None: where the target limits a statement (MariaDB), the core splits a run to fit; write_run then
    #: joins its rows into statements of at most STATEMENT_BYTES.
    driver_statement_bytes = None

    def writer(self, column: sa.Column) -> Callable[[Any], Any]:
        return types.writer(self.dialect, column)

    def reader(self, column: sa.Column) -> Callable[[Any], Any]:
        return types.reader(self.dialect, column)

    def selected(self, info: Any, plain: sa.TableClause) -> list[sa.ColumnElement]:
        return types.selected(self.dialect, info, plain)

    def write_run(self, conn: sa.Connection, op: str, name: str, key: tuple[str, ...], params: list[dict]) -> None:
        """Upserts and inserts as statements of up to ROWS_PER_STATEMENT rows each (pyodbc's executemany
        sends one statement per row: a round trip each); deletes, and SQL Server's MERGE, as they are."""
        if op == "delete" or len(params) < 2 or self.dialect == "mssql":
            return super().write_run(conn, op, name, key, params)
        if op == "upsert":  # the last image of a key wins (PostgreSQL refuses to touch a row twice in one statement)
            params = list({tuple(p[k] for k in key): p for p in params}.values())
        columns = tuple(params[0])
        per = max(1, min(ROWS_PER_STATEMENT, MAX_PARAMETERS // len(columns)))
        for rows in _statements(params, per):
            text, order = self._rows_statement(conn, op, name, key, columns, len(rows))
            conn.exec_driver_sql(text, tuple([rows[i][columns[j]] for i, j in order]))

    def write_audit(self, conn: sa.Connection, rows: list[dict]) -> None:
        self._append(conn, state.audit_log, rows, super().write_audit)

    def write_dead_letters(self, conn: sa.Connection, rows: list[dict]) -> None:
        self._append(conn, state.dead_letters, rows, super().write_dead_letters)

    def _append(self, conn: sa.Connection, table: sa.Table, rows: list[dict], one_by_one: Any) -> None:
        """Rows of one of our state tables in statements of many rows, bound as this dialect binds
        (PostgreSQL, MySQL/MariaDB: an apply's audit rows one by one took as long as its data)."""
        if len(rows) < 2 or self.dialect not in ("postgresql", "mysql"):
            return one_by_one(conn, rows)
        writers = [(c, self.writer(table.c[c])) for c in rows[0]]
        self.write_run(conn, "insert", table.name, (), [{c: bind(row[c]) for c, bind in writers} for row in rows])

    def _rows_statement(self, conn: sa.Connection, op: str, name: str, key: tuple[str, ...],
                        columns: tuple[str, ...], rows: int) -> tuple[str, list[tuple[int, int]]]:
        """The SQL of ``rows`` rows of ``columns`` and the (row, column) of each of its parameters in
        order, compiled once per shape (SQLAlchemy compiles a statement of many VALUES rows anew at
        each execution: most of the write's time)."""
        cache = self.__dict__.setdefault("_rows_statements", {})
        shape = (op, name, key, columns, rows)
        if shape not in cache:
            table = self.statement_table(name)
            values = [{c: sa.bindparam(f"p{i}_{j}") for j, c in enumerate(columns)} for i in range(rows)]
            base = self.upsert(table, key, list(columns)) if op == "upsert" else table.insert()
            compiled = base.values(values).compile(dialect=conn.dialect)
            order = [tuple(int(n) for n in bind[1:].split("_")) for bind in compiled.positiontup]
            cache[shape] = (compiled.string, order)
        return cache[shape]

    def read_rows(self, conn: sa.Connection, name: str, key: tuple[str, ...], keys: list[tuple],
                  latest: str | None = None) -> list[dict]:
        """The rows as change-model values (what pyodbc gives for a uuid, timestamptz or bytea is not:
        read as it is, every update of such a row would look like a conflict)."""
        rows = super().read_rows(conn, name, key, keys, latest)
        cache = self.__dict__.setdefault("_row_readers", {})
        if name not in cache:
            cache[name] = [(str(c.name), read) for c in self.table(name).columns
                           if (read := self.reader(c)) is not same]
        for row in rows:
            for column, read in cache[name]:
                row[column] = read(row[column])
        return rows

    def classify(self, exc: sa.exc.DBAPIError) -> str:
        if exc.connection_invalidated or isinstance(exc, sa.exc.OperationalError) or fault(exc.orig):
            return "retry"
        if sqlstate(exc).startswith(ROW_STATES):
            return "row"
        return SqlTarget.classify(self, exc)


_SIZED = (str, bytes, bytearray)


def _statements(rows: list[dict], per: int):
    """``rows`` in parts of at most ``per`` rows and about STATEMENT_BYTES of values (a row alone may be
    larger: a target with a statement limit measured it against that before)."""
    part: list[dict] = []
    size = 0
    for row in rows:
        bytes_ = 24 * len(row) + sum(map(len, [v for v in row.values() if v.__class__ in _SIZED]))
        if part and (len(part) >= per or size + bytes_ > STATEMENT_BYTES):
            yield part
            part, size = [], 0
        part.append(row)
        size += bytes_
    if part:
        yield part


class PostgresOdbcTarget(OdbcWrites, SqlTarget):
    """PostgreSQL through psqlODBC: INSERT ... ON CONFLICT DO UPDATE as an executemany."""

    dialect = "postgresql"
    insert_on_conflict = staticmethod(pg_insert)

    def bounded_lock_wait(self, conn: sa.Connection, seconds: float) -> None:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'")

    def diagnose(self) -> list[tuple[str, str]]:
        from ..postgres.target import PostgresTarget  # PostgreSQL's own check of synchronous_commit
        return PostgresTarget.diagnose(self)


class MssqlStatements(SqlTarget):
    """SQL Server: one MERGE ... WITH (HOLDLOCK) per row, sent as one fast_executemany per run.

    MERGE and not UPDATE-then-INSERT: one statement, one plan, and with HOLDLOCK the key range stays
    locked between its match and its insert, so a concurrent writer of a new key waits instead of
    both inserting (the known MERGE race is the one without HOLDLOCK)."""

    def write_run(self, conn: sa.Connection, op: str, name: str, key: tuple[str, ...], params: list[dict]) -> None:
        if op != "upsert":
            return super().write_run(conn, op, name, key, params)
        columns = list(params[0])
        statement = sql.merge(name, key, columns)
        conn.exec_driver_sql(statement, [tuple(row[c] for c in columns) for row in params])

    def bounded_lock_wait(self, conn: sa.Connection, seconds: float) -> None:
        conn.exec_driver_sql(f"SET LOCK_TIMEOUT {int(seconds * 1000)}")

    def read_rows(self, conn: sa.Connection, name: str, key: tuple[str, ...], keys: list[tuple],
                  latest: str | None = None) -> list[dict]:
        """SQL Server has no FOR UPDATE (SQLAlchemy's mssql dialect leaves it out): the rows read in the
        apply transaction are locked by the UPDLOCK, HOLDLOCK hints instead (see ``locked_select``);
        ``latest``: of each key the row with the highest value of that column."""
        table = self.table(name)
        rows: list[dict] = []
        for start in range(0, len(keys), READ_KEYS):
            rows.extend(plain_rows(table, conn.execute(self.locked_select(table, key, keys[start:start + READ_KEYS]))))
        if latest is None:
            return rows
        newest: dict[tuple, dict] = {}
        for row in rows:
            k = tuple(row[c] for c in key)
            if k not in newest or row[latest] > newest[k][latest]:
                newest[k] = row
        return list(newest.values())

    @staticmethod
    def locked_select(table: sa.Table, key: tuple[str, ...], keys: list[tuple]) -> sa.Select:
        """The rows of ``keys``, read with UPDLOCK (held to the end of the transaction) and HOLDLOCK (a
        key not there yet stays not there: no one inserts it before this transaction writes it)."""
        return sa.select(table).with_hint(table, "WITH (UPDLOCK, HOLDLOCK)", dialect_name="mssql") \
            .where(key_in(table, key, keys))


class MssqlTarget(OdbcWrites, MssqlStatements):
    """SQL Server's statements with pyodbc's values."""

    dialect = "mssql"


def dialect_target(dialect: str) -> type:
    """The target class for a dialect reached through ODBC."""
    if dialect == "postgresql":
        return PostgresOdbcTarget
    if dialect == "mssql":
        return MssqlTarget
    if dialect == "mysql":
        from ..mysql.target import MySQLTarget
        return type("MySQLOdbcTarget", (OdbcWrites, MySQLTarget), {"dialect": "mysql", "__module__": __name__})
    from ..sqlite.target import SqliteTarget
    return type("SqliteOdbcTarget", (OdbcWrites, SqliteTarget), {"dialect": "sqlite", "__module__": __name__})
