"""SQLAlchemy dialects for PostgreSQL and SQLite reached through pyodbc (SQLAlchemy ships mssql+pyodbc
and mysql+pyodbc, not these). Each is the database's own dialect (its SQL, its reflection) with
pyodbc as the driver; registered as ``postgresql+pyodbc`` and ``sqlite+pyodbc`` on import."""

from __future__ import annotations

import re

from sqlalchemy import types as sqltypes, util
from sqlalchemy.connectors.pyodbc import PyODBCConnector
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.dialects.sqlite.base import SQLiteDialect


_ELEMENT = re.compile(r'"((?:[^"\\]|\\.)*)"|([^,{}]+)')


def _array_items(text: str) -> list:
    """A one-dimensional PostgreSQL array in its text form ('{a,"b c",NULL}') as a list of text."""
    items = []
    for quoted, plain in _ELEMENT.findall(text[1:-1]):
        if plain:
            items.append(None if plain == "NULL" else plain)
        else:
            items.append(re.sub(r"\\(.)", r"\1", quoted))
    return items


class _TextARRAY(ARRAY):
    """An array psqlODBC hands over as its text form (reflection's array_agg(...) results)."""

    def result_processor(self, dialect, coltype):
        item = self.item_type.dialect_impl(dialect).result_processor(dialect, coltype)

        def process(value):
            if not isinstance(value, str):
                return value
            items = _array_items(value)
            return [item(v) for v in items] if item else items
        return process


class PGDialect_pyodbc(PyODBCConnector, PGDialect):
    """PostgreSQL through psqlODBC: numerics arrive as Decimal, timestamps as datetimes, arrays as text."""

    supports_statement_cache = True
    colspecs = util.update_copy(PGDialect.colspecs, {ARRAY: _TextARRAY, sqltypes.ARRAY: _TextARRAY})
    supports_native_decimal = True
    # The server's own version string, not the driver's (which PyODBCConnector would read).
    _get_server_version_info = PGDialect._get_server_version_info

    def _set_backslash_escapes(self, connection):  # standard_conforming_strings is on since 9.1
        self._backslash_escapes = False


class SQLiteDialect_pyodbc(PyODBCConnector, SQLiteDialect):
    """SQLite through the SQLite ODBC driver: date/time columns arrive as the stored text (see
    sql.session), read as SQLite's own adapter reads them."""

    supports_statement_cache = True
    colspecs: dict = {}  # no result processing: values are converted by adapters/odbc/types.py
    _get_server_version_info = SQLiteDialect._get_server_version_info if hasattr(
        SQLiteDialect, "_get_server_version_info") else PyODBCConnector._get_server_version_info


registry.register("postgresql.pyodbc", __name__, "PGDialect_pyodbc")
registry.register("sqlite.pyodbc", __name__, "SQLiteDialect_pyodbc")
