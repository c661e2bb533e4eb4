"""PostgreSQL as a target: upserts and deletes, bulk-loaded with COPY for large runs and snapshot chunks."""

from __future__ import annotations

import operator
from contextlib import contextmanager
from typing import Any, Callable

import psycopg
import sqlalchemy as sa
from psycopg.types.json import Json, Jsonb
from sqlalchemy.dialects.postgresql import ARRAY, JSON, JSONB, insert

from cdc import state

from .._sql import SqlTarget, same as _identity
from .._sql.rows import plain_rows
from . import sql

#: From this many rows on, a run goes through COPY into a staging table instead of one statement
#: of many rows.
COPY_FROM = 200
#: Most parameters one statement may carry (the protocol counts them in 16 bits).
MAX_PARAMETERS = 65535

#: Type OIDs whose values the change model holds as one Python type psycopg dumps in binary
#: (char/varchar as text: same wire format). A table of only these goes by binary COPY, about
#: twice as fast as text COPY to format; any other type keeps the whole COPY in text.
_BINARY_COPY = {16: 16, 17: 17, 20: 20, 21: 21, 23: 23, 25: 25, 700: 700, 701: 701, 1700: 1700, 1042: 25,
                1043: 25, 1082: 1082, 1114: 1114, 1184: 1184, 2950: 2950, 114: 114, 3802: 3802}


class PostgresTarget(SqlTarget):
    """psycopg binds Decimal, aware datetimes, dates, bytes and UUIDs natively; JSON is wrapped."""

    binds_own_values = True

    insert_on_conflict = staticmethod(insert)

    def writer(self, column: sa.Column) -> Callable[[Any], Any]:
        if isinstance(column.type, (JSON, JSONB, sa.JSON)):
            wrap = Jsonb if isinstance(column.type, JSONB) else Json
            return lambda v: None if v is None else wrap(v)
        return _identity

    def diagnose(self) -> list[tuple[str, str]]:
        """The target settings exactly-once depends on: a COMMIT that returned must survive a crash."""
        with self.engine.connect() as conn:
            mode = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
        if mode == "off":
            return [("fail", "target synchronous_commit = off: a crash can lose commits cdc-sync already released "
                             "at the source; set it on for the cdc-sync user: ALTER ROLE <user> SET "
                             "synchronous_commit = on")]
        return [("ok", f"target synchronous_commit = {mode}")]

    def bounded_lock_wait(self, conn: sa.Connection, seconds: float) -> None:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(seconds * 1000)}ms'")

    def classify(self, exc: sa.exc.DBAPIError) -> str:
        if isinstance(exc, sa.exc.OperationalError) or exc.connection_invalidated:
            return "retry"  # server restarted, connection lost, lock timeout: reconnect and retry
        if getattr(exc.orig, "sqlstate", None) == "P0001":
            return "row"  # a trigger's RAISE EXCEPTION: it refuses this row, as a constraint would
        return super().classify(exc)

    def write_run(self, conn: sa.Connection, op: str, name: str, key: tuple[str, ...], params: list[dict]) -> None:
        if len(params) == 1:
            return super().write_run(conn, op, name, key, params)
        if op == "insert" and len(params) >= COPY_FROM:  # new rows only: straight in, a key that exists fails
            columns = list(params[0])
            oids = self._binary_oids(conn, name, columns) if self.trusted(name) >= set(columns) else None
            self._copy(conn, name, columns, map(_values_of(columns), params), oids)
            return
        if op == "upsert":
            # The last image of a key wins (a run's upserts all carry the same columns, and no other
            # change of the row comes between them: see cdc/apply/_writes.py); ON CONFLICT may not touch one
            # row twice in a statement.
            params = _last_per_key(params, key)
        columns = list(params[0]) if op != "delete" else list(key)
        if len(params) < COPY_FROM:
            # One statement of many rows: the server plans it once, where an executemany runs one
            # statement per row (of an OLTP load's small runs, most of the apply's time).
            per = max(1, MAX_PARAMETERS // len(columns))
            for start in range(0, len(params), per):
                rows = params[start:start + per]
                statement = (sql.upsert_values(name, tuple(columns), key if op == "upsert" else None, len(rows))
                             if op != "delete" else sql.delete_keys(name, key, len(rows)))
                conn.exec_driver_sql(statement, tuple([v for row in rows for v in map(row.__getitem__, columns)]))
            return
        trusted = self.trusted(name)
        oids = self._binary_oids(conn, name, columns) if trusted >= set(columns) else None
        if op == "upsert" and name in self.__dict__.get("_direct", ()):
            # A snapshot chunk into a table that was empty: straight in, no staging, no upsert.
            self._copy(conn, name, columns, map(_values_of(columns), params), oids)
            return
        stage = f"_cdc_stage_{op}_{name}"[:63]
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {sql.quote(stage)}")  # an earlier run in this transaction
        conn.exec_driver_sql(sql.stage(stage, name, columns))
        # Binary only where the values are the source's own, of identical types (trusted columns):
        # other values may be of any type the column accepts as text.
        self._copy(conn, stage, columns, map(_values_of(columns), params), oids)
        statement = sql.upsert_from(name, stage, columns, key) if op == "upsert" else sql.delete_using(name, stage, key)
        conn.exec_driver_sql(statement)

    def read_rows(self, conn: sa.Connection, name: str, key: tuple[str, ...], keys: list[tuple],
                  latest: str | None = None) -> list[dict]:
        """One statement for all ``keys``, passed as binary arrays, each key joined LATERAL to its row
        (locked FOR UPDATE), where 500 keys a statement cost a plan and a round trip each. LATERAL
        ... LIMIT 1 makes it one primary-key lookup per key whatever the statistics say: a plain join
        to a table a snapshot has just filled (not analyzed yet) was planned as a hash join over the
        whole table, once per part (a 1,000,000-row table read 50 times to stream one UPDATE of it).
        Run on the driver's cursor: conflict detection reads every row a change touches, and
        SQLAlchemy's result rows cost a fifth of the read."""
        if latest is not None or len(keys) <= 1:
            return super().read_rows(conn, name, key, keys, latest)
        cache = self.__dict__.setdefault("_keyed", {})
        if (name, key) not in cache:
            table = self.table(name)
            names = [str(c.name) for c in table.columns]
            try:
                kinds = [table.c[k].type.compile(dialect=conn.dialect) for k in key]
            except sa.exc.CompileError:  # a key type SQLAlchemy cannot name: 500 keys a statement
                kinds = None
            cache[(name, key)] = (names, kinds and sql.rows_by_key(name, names, key, kinds))
        names, statement = cache[(name, key)]
        if statement is None:
            return super().read_rows(conn, name, key, keys, latest)
        with conn.connection.driver_connection.cursor() as cursor:
            found = cursor.execute(statement, {f"k{i}": [row[i] for row in keys] for i in range(len(key))}).fetchall()
        return [dict(zip(names, row)) for row in found]

    def newest_rows(self, conn: sa.Connection, table: sa.Table, key: tuple[str, ...], keys: list[tuple],
                    latest: str) -> list[dict]:
        """One statement for all ``keys``, passed as arrays: each key joined LATERAL to its last row
        (ORDER BY ``latest`` DESC LIMIT 1), which PostgreSQL finds by walking the primary key's index
        backwards, even in a table it has no statistics for yet (a journal a snapshot just filled),
        where an IN list made it scan the whole table once per statement."""
        cache = self.__dict__.setdefault("_newest", {})
        if (table.name, key, latest) not in cache:
            arrays = [sa.bindparam(f"k_{k}", type_=ARRAY(table.c[k].type)) for k in key]
            wanted = sa.func.unnest(*arrays).table_valued(*key).render_derived(name="wanted")
            newest = (sa.select(table).where(*[table.c[k] == wanted.c[k] for k in key])
                      .order_by(table.c[latest].desc()).limit(1).lateral("newest"))
            cache[(table.name, key, latest)] = sa.select(newest).select_from(wanted).join(newest, sa.true())
        params = {f"k_{k}": [row[i] for row in keys] for i, k in enumerate(key)}
        return plain_rows(table, conn.execute(cache[(table.name, key, latest)], params))

    def write_audit(self, conn: sa.Connection, rows: list[dict]) -> None:
        if len(rows) < COPY_FROM:
            return super().write_audit(conn, rows)
        columns = list(rows[0])
        self._copy(conn, state.audit_log.name, columns, map(_values_of(columns), rows),
                   self._binary_oids(conn, state.audit_log.name, columns))

    def column_types(self, table: str) -> dict[str, str]:
        with self.engine.connect() as conn:
            return dict(conn.exec_driver_sql(sql.COLUMN_TYPES, {"table": sql.quoted_name(table)}).all())

    def bulk_load(self, conn: sa.Connection, table: str, columns: list[str], key: tuple[str, ...],
                  copy_out: Callable, *, direct: bool = False, fmt: str = "binary") -> tuple[int, list | None]:
        """One snapshot chunk as COPY data: binary from a PostgreSQL source with identical column types,
        or text (``fmt``) made by another kind of source for exactly these column types.

        ``direct``: the table was empty when the snapshot began and chunks are disjoint, so COPY goes
        straight into it; otherwise into a staging table and upserted from there. Returns the rows
        copied and the last key among them (None when none).
        """
        stage = table if direct else f"_cdc_stage_snapshot_{table}"[:63]
        if not direct:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {sql.quote(stage)}")
            conn.exec_driver_sql(sql.stage(stage, table, columns))
        cursor = conn.connection.driver_connection.cursor()
        statement = sql.copy_in_binary(stage, columns) if fmt == "binary" else sql.copy_into(stage, columns)
        with _as_sqlalchemy_errors(statement):
            with cursor.copy(statement) as into:
                copy_out(into.write)
        count = cursor.rowcount
        last = list(conn.exec_driver_sql(sql.edge_key(stage, key, last=True)).one()) if count else None
        if count and not direct:
            conn.exec_driver_sql(sql.upsert_from(table, stage, columns, key))
        return count, last

    def _binary_oids(self, conn: sa.Connection, table: str, columns: list[str]) -> list[int] | None:
        """The OIDs to dump ``columns`` of ``table`` with in a binary COPY, or None: COPY as text."""
        cache = self.__dict__.setdefault("_oids", {})
        if table not in cache:
            cache[table] = dict(conn.exec_driver_sql(sql.COLUMN_OIDS, {"table": sql.quoted_name(table)}).all())
        oids = [_BINARY_COPY.get(cache[table].get(c)) for c in columns]
        return None if None in oids else oids

    @staticmethod
    def _copy(conn: sa.Connection, table: str, columns: list[str], rows, oids: list[int] | None = None) -> None:
        cursor = conn.connection.driver_connection.cursor()
        statement = sql.copy_into(table, columns) if oids is None else sql.copy_in_binary(table, columns)
        with _as_sqlalchemy_errors(statement), cursor.copy(statement) as copy:
            if oids is not None:
                copy.set_types(oids)
            try:
                for row in rows:
                    copy.write_row(row)
            except (TypeError, ValueError, OverflowError) as exc:
                # A value binary COPY cannot carry (e.g. 'infinity' kept as text): the batch goes
                # again row by row, where the server parses it from text.
                raise psycopg.DataError(f"binary COPY into {table}: {exc}") from exc


def _last_per_key(params: list[dict], key: tuple[str, ...]) -> list[dict]:
    """The last row of each key value, in the order the keys first came."""
    if len(key) == 1:
        (k,) = key
        return list({p[k]: p for p in params}.values())
    return list({tuple([p[k] for k in key]): p for p in params}.values())


def _values_of(columns: list[str]) -> Callable[[dict], tuple]:
    """A row dict's values in ``columns`` order, as a tuple (operator.itemgetter: one C call per row)."""
    get = operator.itemgetter(*columns)
    return get if len(columns) > 1 else (lambda row: (get(row),))


@contextmanager
def _as_sqlalchemy_errors(statement: str):
    """COPY runs on the raw psycopg cursor; give its errors SQLAlchemy's types like every other statement."""
    try:
        yield
    except psycopg.Error as exc:
        raise sa.exc.DBAPIError.instance(statement, None, exc, psycopg.Error) from exc
