"""The SQL the ODBC adapter sends as text: session settings per dialect, and SQL Server's statements
(rowversion and Change Tracking reads, the changelog trigger, MERGE, doctor's checks)."""

from __future__ import annotations

from typing import Any

from cdc.errors import ConfigError

#: Every session, per dialect: timestamps with a zone read and written in UTC; MySQL/MariaDB strict
#: (a value that does not fit is an error, never cut) and 4-byte UTF-8.
SESSIONS = {
    "postgresql": ["SET TIME ZONE 'UTC'"],
    "mysql": ["SET SESSION time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,"
              "NO_ENGINE_SUBSTITUTION', NAMES utf8mb4 COLLATE utf8mb4_unicode_ci"],
    "sqlite": [],
    # Without XACT_ABORT a failed statement may leave SQL Server's transaction open and half done.
    "mssql": ["SET XACT_ABORT ON"],
}
#: ODBC SQL types whose values the SQLite driver converts (dropping what it cannot read: a date
#: '2024-02-30' becomes NULL) where cdc-sync wants the stored text: SQL_TYPE_DATE, _TIME, _TIMESTAMP.
SQLITE_TEXT_TYPES = (91, 92, 93)


#: ODBC's SQLGetInfo code for the name of the database product a connection reaches.
SQL_DBMS_NAME = 17
#: Words of each dialect's product name as drivers report it.
PRODUCTS = {"postgresql": ("postgres",), "mysql": ("mysql", "mariadb"), "sqlite": ("sqlite",),
            "mssql": ("sql server",)}


def check_product(dialect: str, connection: Any) -> None:
    """ConfigError (the connection closed) when a new pyodbc connection reaches another database than
    the URL's dialect says: its SQL would fail in ways that name neither."""
    product = str(connection.getinfo(SQL_DBMS_NAME) or "")
    if not any(word in product.lower() for word in PRODUCTS[dialect]):
        connection.close()
        raise ConfigError(f"the ODBC connection reaches {product or 'an unknown database'}, not {dialect} as the URL "
                          f"says: fix dialect= (postgresql, mysql, sqlite or mssql) or the driver")


def session(dialect: str, connection: Any) -> None:
    """Set up a new pyodbc connection for ``dialect`` (committed: a rollback must not undo it)."""
    if dialect == "mssql":
        from .types import SQL_SS_TIMESTAMPOFFSET, read_datetimeoffset
        connection.add_output_converter(SQL_SS_TIMESTAMPOFFSET, read_datetimeoffset)
    if dialect == "mysql":  # the driver drops a TIME's fraction of a second; PyMySQL gives a timedelta
        from .types import read_mysql_time
        connection.add_output_converter(SQLITE_TEXT_TYPES[1], read_mysql_time)
    if dialect == "sqlite":
        for kind in SQLITE_TEXT_TYPES:
            connection.add_output_converter(kind, _text)
    if dialect in ("postgresql", "sqlite"):
        # psqlODBC's Unicode driver and SQLite's speak UTF-8 in narrow strings.
        connection.setencoding(encoding="utf-8")
    cursor = connection.cursor()
    for statement in SESSIONS[dialect]:
        cursor.execute(statement)
    cursor.close()
    connection.commit()


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8")


def quote(name: str) -> str:
    """A SQL Server identifier in brackets."""
    return "[" + name.replace("]", "]]") + "]"


# -- SQL Server: the server's clock and doctor ---------------------------------------------------------
#: The server's current UTC time (SYSDATETIME is the server's local time, which may be anything).
MSSQL_CLOCK = "SYSUTCDATETIME()"
#: Whether Change Tracking is on for the database (a row) and how long it keeps changes.
CT_DATABASE = ("SELECT retention_period, retention_period_units_desc, is_auto_cleanup_on "
               "FROM sys.change_tracking_databases WHERE database_id = DB_ID()")
#: The tables of the current database that Change Tracking follows.
CT_TABLES = ("SELECT t.name FROM sys.change_tracking_tables c JOIN sys.tables t ON t.object_id = c.object_id "
             "WHERE SCHEMA_NAME(t.schema_id) = SCHEMA_NAME()")
#: Whether this login may read a table.
SELECT_PERMISSION = "SELECT HAS_PERMS_BY_NAME(?, 'OBJECT', 'SELECT')"
#: Whether this login may read the change tables of a table: VIEW CHANGE TRACKING on it.
CT_PERMISSION = "SELECT HAS_PERMS_BY_NAME(?, 'OBJECT', 'VIEW CHANGE TRACKING')"
#: The version the database has reached, and the oldest still kept for a table.
CT_CURRENT = "SELECT CHANGE_TRACKING_CURRENT_VERSION()"
CT_MIN_VALID = "SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(?))"
#: The newest rowversion the database has issued (committed or not).
DBTS = "SELECT CAST(@@DBTS AS BIGINT)"
#: The oldest rowversion any open transaction may still commit with (NULL: none open): a rowversion
#: read stops below it, so a long transaction's rows are not passed by.
MIN_ACTIVE_ROWVERSION = "SELECT CAST(MIN_ACTIVE_ROWVERSION() AS BIGINT)"


def ct_changes(table: str, key: tuple[str, ...], columns: list[str], limit: int | None) -> str:
    """The changes of ``table`` after version ? and up to version ? (both bound), with the current row
    (NULL columns after a delete), in version order, at most ``limit`` (None: all):
    CHANGETABLE(CHANGES ...) LEFT JOIN the table."""
    on = " AND ".join(f"t.{quote(k)} = ct.{quote(k)}" for k in key)
    keys = ", ".join(f"ct.{quote(k)} AS {quote('ct_' + k)}" for k in key)
    values = ", ".join(f"t.{quote(c)}" for c in columns)
    order = ", ".join(f"ct.{quote(k)}" for k in key)
    top = f"TOP ({int(limit)}) " if limit is not None else ""
    return (f"SELECT {top}ct.SYS_CHANGE_VERSION AS ct_version, ct.SYS_CHANGE_OPERATION AS ct_op, "
            f"{keys}, {values} FROM CHANGETABLE(CHANGES {quote(table)}, ?) AS ct "
            f"LEFT JOIN {quote(table)} AS t ON {on} WHERE ct.SYS_CHANGE_VERSION <= ? "
            f"ORDER BY ct.SYS_CHANGE_VERSION, {order}")


def enable_change_tracking(table: str) -> str:
    return f"ALTER TABLE {quote(table)} ENABLE CHANGE_TRACKING WITH (TRACK_COLUMNS_UPDATED = OFF)"


def rowversion_read(table: str, column: str, columns: list[str], limit: int) -> str:
    """Rows of ``table`` whose rowversion ``column`` lies after ? and below ? (both bound, as BIGINT),
    in rowversion order, at most ``limit``."""
    c = quote(column)
    values = ", ".join(f"{quote(name)}" for name in columns if name != column)
    return (f"SELECT TOP ({int(limit)}) CAST({c} AS BIGINT) AS cdc_rowversion_, {values} FROM {quote(table)} "
            f"WHERE {c} > CAST(CAST(? AS BIGINT) AS BINARY(8)) AND {c} < CAST(CAST(? AS BIGINT) AS BINARY(8)) "
            f"ORDER BY {c}")


def merge(table: str, key: tuple[str, ...], columns: list[str]) -> str:
    """One row upserted: MERGE ... WITH (HOLDLOCK), so two writers of a new key cannot both insert
    (without HOLDLOCK MERGE takes no range lock between its check and its insert)."""
    source = ", ".join(f"? AS {quote(c)}" for c in columns)
    on = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in key)
    updates = ", ".join(f"t.{quote(c)} = s.{quote(c)}" for c in columns if c not in key)
    names = ", ".join(quote(c) for c in columns)
    values = ", ".join(f"s.{quote(c)}" for c in columns)
    matched = f"WHEN MATCHED THEN UPDATE SET {updates} " if updates else ""
    return (f"MERGE {quote(table)} WITH (HOLDLOCK) AS t USING (SELECT {source}) AS s ON {on} "
            f"{matched}WHEN NOT MATCHED THEN INSERT ({names}) VALUES ({values});")
