"""Target rows read by key: the key condition, rows as plain dicts, and the row a driver cannot read."""

from __future__ import annotations

import sqlalchemy as sa

from cdc.errors import RowError


def key_in(table: sa.Table, key: tuple[str, ...], keys: list[tuple]) -> sa.ColumnElement:
    """``key`` is one of ``keys``: IN for one column, a row-value IN for a compound key."""
    columns = [table.c[k] for k in key]
    if len(columns) == 1:
        return columns[0].in_([k[0] for k in keys])
    return sa.tuple_(*columns).in_([tuple(k) for k in keys])


def unreadable(conn: sa.Connection, table: sa.Table, key: tuple[str, ...], keys: list[tuple],
                exc: Exception) -> RowError:
    """The row and column of ``keys`` whose value cannot be read as its column's type (SQLite keeps
    whatever it is given: 'yesterday' in a DATETIME column), found one key and column at a time."""
    for one in keys:
        for column in table.columns:
            try:
                conn.execute(sa.select(column).where(key_in(table, key, [one]))).fetchall()
            except (ValueError, TypeError) as error:
                return RowError(f"the target row cannot be read: {error}: a person or program wrote a value that "
                                f"is no {column.type}; correct it in the target table, then run again",
                                table=str(table.name), key=one, column=str(column.name))
    return RowError(f"the target rows cannot be read: {exc}", table=str(table.name))


def plain_rows(table: sa.Table, result: sa.CursorResult) -> list[dict]:
    """Rows of ``table`` as dicts keyed by plain str names (a reflected name is a str subclass);
    fetched all at once (iterating a result fetches row by row)."""
    names = [str(c.name) for c in table.columns]
    return [dict(zip(names, row)) for row in result.fetchall()]
