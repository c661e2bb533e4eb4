"""Reflection and keyed, chunked reads over SQLAlchemy Core, shared by SQL sources and targets."""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import sqlalchemy as sa

from cdc.changes import Row
from cdc.errors import SchemaError

from ..base import TableInfo


def same(value: Any) -> Any:
    """The reader or writer of a value that needs no converting (recognised, and skipped, by identity)."""
    return value


_identity = same


class KeyedReads:
    """Reflection and keyed, chunked reads over SQLAlchemy Core, for sources and targets alike."""

    engine: sa.Engine
    #: SQL for reconciliation fingerprints in this dialect (see cdc/reconcile.py), or None: the
    #: table is then read and fingerprinted in Python.
    fingerprints: Any = None

    def reader(self, column: sa.Column) -> Callable[[Any], Any]:
        """How a driver value of ``column`` becomes the change model's value (Decimal, never float)."""
        return _identity

    def selected(self, info: TableInfo, plain: sa.TableClause) -> list[sa.ColumnElement]:
        """What a read selects for each column of ``plain`` (``info``'s columns); a dialect may read one
        column as another type where its driver would hand it over wrong."""
        return list(plain.c)

    def reflected(self, table: sa.Table) -> None:
        """Correct what reflection cannot see in this dialect (in place); called once per table."""

    def stored_name(self, name: str) -> str | None:
        """How the database spells a table (or view) whose name differs from ``name`` only in
        letter case, or None: ``name`` is spelt as stored, or no such table exists. SQLite takes
        both spellings for one table where reflection and our changelog do not; other databases
        take them for two tables: either way a name must be written as the database stores it."""
        inspector = sa.inspect(self.engine)
        names = inspector.get_table_names() + inspector.get_view_names()
        if name in names:
            return None
        return next((n for n in names if n.lower() == name.lower()), None)

    def describe(self, table: str) -> TableInfo:
        """The table's columns and primary key (cached); SchemaError if it does not exist."""
        cache = self.__dict__.setdefault("_info", {})
        if table not in cache:
            if not sa.inspect(self.engine).has_table(table):
                raise SchemaError(f"table {table} does not exist")
            reflected = sa.Table(table, sa.MetaData(), autoload_with=self.engine)
            self.reflected(reflected)
            key = tuple(str(c.name) for c in reflected.primary_key.columns)
            cache[table] = TableInfo(table, list(reflected.columns), key)
        return cache[table]

    def snapshot(self, table: str, key: tuple[str, ...], after_key: tuple | None, limit: int,
                 where: str | None = None) -> list[Row]:
        """Up to ``limit`` rows after ``after_key`` in key order, each read in a short transaction;
        ``where``: an SQL condition the rows must meet too (reconciliation's --where)."""
        info = self.describe(table)
        plain = sa.table(table, *[sa.column(c) for c in info.column_names])
        query = sa.select(*self.selected(info, plain)).order_by(*[plain.c[k] for k in key]).limit(limit)
        if after_key is not None:
            query = query.where(sa.tuple_(*[plain.c[k] for k in key]) > sa.tuple_(*[sa.literal(v) for v in after_key]))
        if where:  # in parentheses: an OR in it must not escape the key range
            query = query.where(sa.text(f"({where})"))
        with self.reading() as conn:
            rows = conn.execute(query).all()
        return self._converted(info, rows)

    def rows_by_keys(self, table: str, key: tuple[str, ...], keys: list[tuple]) -> list[Row]:
        """The rows with these key values (those that exist), read in parts of 500 keys."""
        info = self.describe(table)
        plain = sa.table(table, *[sa.column(c) for c in info.column_names])
        found: list[Row] = []
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 500):
                part = keys[start:start + 500]
                if len(key) == 1:
                    condition = plain.c[key[0]].in_([k[0] for k in part])
                else:
                    condition = sa.tuple_(*[plain.c[k] for k in key]).in_([tuple(k) for k in part])
                found += self._converted(info, conn.execute(sa.select(*self.selected(info, plain)).where(condition)).all())
        return found

    def _converted(self, info: TableInfo, rows: list) -> list[Row]:
        names = info.column_names
        converting = [(name, read) for name, read in ((n, self.reader(c)) for n, c in zip(names, info.columns))
                      if read is not same]
        result = [dict(zip(names, row)) for row in rows]
        for name, read in converting:
            for row in result:
                row[name] = read(row[name])
        return result

    def reading(self) -> contextlib.AbstractContextManager[sa.Connection]:
        """The connection snapshot chunks are read on (a source may pin it to a snapshot)."""
        return self.engine.connect()

    @property
    def backend(self) -> str:
        """The SQLAlchemy backend name of the database reached (one of the adapter's backends)."""
        return self.engine.dialect.name

    def quote(self, name: str) -> str:
        """``name`` as an identifier in this database's SQL, quoted where it needs quoting."""
        return self.engine.dialect.identifier_preparer.quote(name)

    def sql_text(self, clause: sa.ClauseElement) -> str:
        """The SQL text of ``clause`` in this database's dialect, its values written in."""
        return str(clause.compile(dialect=self.engine.dialect, compile_kwargs={"literal_binds": True}))

    def read_only(self) -> None:
        """Make every later transaction read-only, as this adapter's fingerprints know how."""
        self.fingerprints.read_only(self.engine)

    def count(self, table: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar()

    def close(self) -> None:
        self.engine.dispose()
