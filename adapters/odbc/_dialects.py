"""SQLAlchemy dialects for PostgreSQL and SQLite reached through pyodbc (SQLAlchemy ships mssql+pyodbc
and mysql+pyodbc, not these). Each is the database's own dialect (its SQL, its reflection) with
pyodbc as the driver; registered as ``postgresql+pyodbc`` and ``sqlite+pyodbc`` on import."""

from __future__ import annotations

import datetime
import re

from sqlalchemy import cast, types as sqltypes, util
from sqlalchemy.connectors.pyodbc import PyODBCConnector
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.mssql.base import MSTypeCompiler
from sqlalchemy.dialects.mssql.pyodbc import MSDialect_pyodbc
from sqlalchemy.dialects.mysql.pyodbc import MySQLDialect_pyodbc
from sqlalchemy.dialects.postgresql import ARRAY, MONEY
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


class _NumericMONEY(MONEY):
    """psqlODBC hands a money value over as a double (1234567.89 as a float; large amounts rounded) and
    cannot bind one into a money column: read as numeric, which is exact (a Decimal, whatever the
    server's lc_monetary), and bound as a Decimal, which PostgreSQL assigns to money."""

    def column_expression(self, colexpr):
        return cast(colexpr, sqltypes.Numeric())


class PGDialect_pyodbc(PyODBCConnector, PGDialect):
    """PostgreSQL through psqlODBC: numerics arrive as Decimal, timestamps as datetimes, arrays as text."""

    supports_statement_cache = True
    colspecs = util.update_copy(PGDialect.colspecs, {ARRAY: _TextARRAY, sqltypes.ARRAY: _TextARRAY,
                                                     MONEY: _NumericMONEY})
    supports_native_decimal = True
    # The server's own version string, not the driver's (which PyODBCConnector would read).
    _get_server_version_info = PGDialect._get_server_version_info

    def _set_backslash_escapes(self, connection):  # standard_conforming_strings is on since 9.1
        self._backslash_escapes = False


class SQLiteDialect_pyodbc(PyODBCConnector, SQLiteDialect):
    """SQLite through the SQLite ODBC driver: date/time columns arrive as the stored text (see
    sql.session), so SQLAlchemy's SQLite types read and write them as they do with pysqlite. The
    driver returns no rows from a statement with RETURNING: SQLAlchemy is told it has none."""

    supports_statement_cache = True

    def __init__(self, **kw):
        super().__init__(**kw)
        # SQLAlchemy's SQLite dialect turns these on for SQLite 3.35 and later.
        self.insert_returning = self.update_returning = self.delete_returning = False
        self.postfetch_lastrowid = False  # pyodbc cursors have no lastrowid

    @classmethod
    def import_dbapi(cls):
        """pyodbc, with the SQLite library version SQLAlchemy's SQLite dialect asks its driver for
        (the ODBC driver links the system's libsqlite3, which Python's sqlite3 module reports)."""
        import sqlite3
        import types

        import pyodbc
        module = types.ModuleType("pyodbc")
        module.__dict__.update(pyodbc.__dict__)
        module.sqlite_version_info = sqlite3.sqlite_version_info
        return module


class _TextDATETIME(sqltypes.DateTime):
    """A datetime bound as ISO text: MariaDB's ODBC driver drops the fraction of a bound datetime
    (a claim's 12:00:00.250 stored as 12:00:00 no longer matches the one this process holds)."""

    def bind_processor(self, dialect):
        def process(value):
            if value is None or isinstance(value, str):
                return value
            if getattr(value, "tzinfo", None) is not None:
                value = value.astimezone(datetime.timezone.utc).replace(tzinfo=None)  # sessions run in UTC
            return value.isoformat(sep=" ")
        return process


class MySQLDialect_cdc_pyodbc(MySQLDialect_pyodbc):
    """MySQL/MariaDB through pyodbc, datetimes bound with their microseconds."""

    supports_statement_cache = True
    colspecs = util.update_copy(MySQLDialect_pyodbc.colspecs, {sqltypes.DateTime: _TextDATETIME})


class _UnicodeTypes(MSTypeCompiler):
    """SQL Server declarations that keep what other databases keep: text as NVARCHAR (VARCHAR holds only
    the collation's code page: '☕' would be stored as '?'), date/times as DATETIME2 (DATETIME rounds
    to 1/300 s), large values as (N)VARCHAR(max)/VARBINARY(max), never the deprecated TEXT and IMAGE."""

    def visit_string(self, type_, **kw):
        return self.visit_NVARCHAR(type_, **kw)

    def visit_text(self, type_, **kw):
        return self.visit_NVARCHAR(type_, **kw)

    def visit_datetime(self, type_, **kw):
        return self.visit_DATETIMEOFFSET(type_, **kw) if type_.timezone else self.visit_DATETIME2(type_, **kw)


class MSDialect_cdc_pyodbc(MSDialect_pyodbc):
    """SQL Server through pyodbc, declaring Unicode text and exact date/times (see _UnicodeTypes)."""

    supports_statement_cache = True
    type_compiler_cls = _UnicodeTypes

    def __init__(self, **kw):
        kw.setdefault("deprecate_large_types", True)
        super().__init__(**kw)
        # What DDL is compiled for before the first connection reads the server's own (2012 and later).
        self.server_version_info = (11,)


#: The SQLAlchemy URL scheme of each dialect's engine over pyodbc.
ENGINES = {"postgresql": "postgresql+pyodbc", "sqlite": "sqlite+pyodbc", "mysql": "mysql+cdc_pyodbc",
           "mssql": "mssql+cdc_pyodbc"}

registry.register("postgresql.pyodbc", __name__, "PGDialect_pyodbc")
registry.register("mysql.cdc_pyodbc", __name__, "MySQLDialect_cdc_pyodbc")
registry.register("mssql.cdc_pyodbc", __name__, "MSDialect_cdc_pyodbc")
registry.register("sqlite.pyodbc", __name__, "SQLiteDialect_pyodbc")
