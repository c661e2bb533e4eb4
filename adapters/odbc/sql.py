"""The SQL the ODBC adapter sends as text: session settings per dialect, and SQL Server's statements
(rowversion and Change Tracking reads, the changelog trigger, MERGE, doctor's checks)."""

from __future__ import annotations

import hashlib
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


# -- SQL Server: capture `trigger` ---------------------------------------------------------------------
CHANGELOG = "_cdc_changelog"
EPOCH = "_cdc_epoch"
CONSUMERS = "_cdc_consumers"
#: The changelog, the epoch writers stamp their changes with, and the pairs it serves (idempotent).
CREATE_STATE = [
    f"IF OBJECT_ID(N'{CHANGELOG}', N'U') IS NULL CREATE TABLE {CHANGELOG} (id BIGINT IDENTITY(1, 1) NOT NULL "
    "PRIMARY KEY, epoch BIGINT NOT NULL, tbl NVARCHAR(128) NOT NULL, op VARCHAR(6) NOT NULL, [before] NVARCHAR(MAX) "
    "NULL, [after] NVARCHAR(MAX) NULL, changed_at DATETIME2(6) NOT NULL DEFAULT SYSUTCDATETIME())",
    f"IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE object_id = OBJECT_ID(N'{CHANGELOG}') AND name = N'{CHANGELOG}_epoch') "
    f"CREATE INDEX {CHANGELOG}_epoch ON {CHANGELOG} (epoch, id)",
    f"IF OBJECT_ID(N'{EPOCH}', N'U') IS NULL CREATE TABLE {EPOCH} (k INT NOT NULL PRIMARY KEY, n BIGINT NOT NULL)",
    f"IF NOT EXISTS (SELECT 1 FROM {EPOCH}) INSERT INTO {EPOCH} (k, n) VALUES (1, 1)",
    f"IF OBJECT_ID(N'{CONSUMERS}', N'U') IS NULL CREATE TABLE {CONSUMERS} (pair NVARCHAR(200) NOT NULL PRIMARY KEY, "
    "tables NVARCHAR(MAX) NOT NULL, acked BIGINT NOT NULL DEFAULT 0, generation NVARCHAR(100) NULL)",
]
DROP_STATE = [f"DROP TABLE IF EXISTS {name}" for name in (CHANGELOG, EPOCH, CONSUMERS)]
#: Register a pair with its tables (SQLAlchemy text: binds :pair, :tables).
REGISTER = (f"MERGE {CONSUMERS} WITH (HOLDLOCK) AS c USING (SELECT :pair AS pair, :tables AS tables) AS s "
            "ON c.pair = s.pair WHEN MATCHED THEN UPDATE SET tables = s.tables "
            "WHEN NOT MATCHED THEN INSERT (pair, tables) VALUES (s.pair, s.tables);")
#: Raise a pair's acknowledged epoch (SQLAlchemy text: binds :position, :pair).
ACKNOWLEDGE = (f"UPDATE {CONSUMERS} SET acked = CASE WHEN acked > :position THEN acked ELSE :position END "
               "WHERE pair = :pair")
#: The newest changelog id (ChangelogCapture.idle watches it).
CHANGELOG_MARK = f"SELECT ISNULL(MAX(id), 0) FROM {CHANGELOG}"
#: The epoch writers stamp now; sealing it takes its row's exclusive lock, which waits for every
#: transaction holding the row's shared lock (each writer's trigger takes it, held to its end).
CURRENT_EPOCH = f"SELECT n FROM {EPOCH} WHERE k = 1"
SEAL = f"UPDATE {EPOCH} SET n = n + 1 OUTPUT deleted.n WHERE k = 1"
LOGGED_SINCE = f"SELECT TOP (1) 1 FROM {CHANGELOG} WHERE epoch >= ?"
PENDING = f"SELECT COUNT_BIG(*) FROM {CHANGELOG} WHERE epoch > ?"
PURGEABLE = f"SELECT MIN(acked) FROM {CONSUMERS}"
PURGE = f"DELETE TOP (5000) FROM {CHANGELOG} WHERE epoch <= ?"
#: The capture triggers: name, table, disabled, the text they were made with.
TRIGGERS = ("SELECT tr.name, OBJECT_NAME(tr.parent_id), tr.is_disabled, OBJECT_DEFINITION(tr.object_id) "
            "FROM sys.triggers AS tr WHERE tr.parent_class = 1 AND tr.name LIKE N'\\_cdc\\_%' ESCAPE N'\\'")
#: A table's columns and their types (the type's own name, or the system type under an alias type).
COLUMNS = ("SELECT c.name, TYPE_NAME(c.system_type_id), TYPE_NAME(c.user_type_id) FROM sys.columns AS c "
           "WHERE c.object_id = OBJECT_ID(?) ORDER BY c.column_id")
#: The oldest open transaction of the database: id, session, seconds open.
OLDEST_TRANSACTION = ("SELECT TOP (1) t.transaction_id, s.session_id, DATEDIFF(SECOND, t.transaction_begin_time, "
                      "SYSDATETIME()) FROM sys.dm_tran_active_transactions AS t JOIN sys.dm_tran_session_transactions "
                      "AS s ON s.transaction_id = t.transaction_id WHERE s.session_id <> @@SPID "
                      "ORDER BY t.transaction_begin_time")
#: The mark in a capture trigger's text, then a digest of the columns (and types) it logs: a trigger
#: made for other columns than the table has now is stale.
COLUMNS_MARK = "/* cdc-sync columns "
#: Types an AFTER trigger cannot read from ``inserted``/``deleted``.
UNREADABLE_TYPES = {"text", "ntext", "image"}
#: Types FOR JSON cannot write (CLR types): logged as their text.
CLR_TYPES = {"geography", "geometry", "hierarchyid"}


def trigger_name(table: str) -> str:
    return f"_cdc_{table}"[:128]


def _image(alias: str, columns: list[tuple[str, str, str]]) -> str:
    """One row of ``inserted``/``deleted`` as a JSON object of its columns (NULLs too)."""
    parts = []
    for name, base, own in columns:
        value = f"{alias}.{quote(name)}"
        if own in CLR_TYPES:
            value = f"{value}.ToString()"
        elif base == "sql_variant":
            value = f"CAST({value} AS NVARCHAR(4000))"
        parts.append(f"{value} AS {quote(name)}")
    return f"(SELECT {', '.join(parts)} FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES)"


def create_trigger(table: str, key: tuple[str, ...], columns: list[tuple[str, str, str]]) -> str:
    """The one statement trigger logging every row an INSERT, UPDATE, DELETE (or MERGE) changed, with
    the epoch read under a shared lock held to the writer's commit. SQL Server pairs no row of
    ``inserted`` with its row of ``deleted``: they are joined by the key, so an update that changed
    a row's key is logged as the old key's delete and the new key's insert."""
    on = " AND ".join(f"i.{quote(k)} = d.{quote(k)}" for k in key)
    first = quote(key[0])
    mark = f"{COLUMNS_MARK}{columns_digest(columns)} */"
    return (f"CREATE OR ALTER TRIGGER {quote(trigger_name(table))} ON {quote(table)} AFTER INSERT, UPDATE, DELETE AS "
            f"BEGIN SET NOCOUNT ON; {mark} "
            "IF NOT EXISTS (SELECT 1 FROM inserted) AND NOT EXISTS (SELECT 1 FROM deleted) RETURN; "
            "DECLARE @cdc_epoch BIGINT; "
            f"SELECT @cdc_epoch = n FROM {EPOCH} WITH (HOLDLOCK, ROWLOCK) WHERE k = 1; "
            f"INSERT INTO {CHANGELOG} (epoch, tbl, op, [before], [after]) "
            f"SELECT @cdc_epoch, N'{table.replace(chr(39), chr(39) * 2)}', "
            f"CASE WHEN d.{first} IS NULL THEN 'insert' WHEN i.{first} IS NULL THEN 'delete' ELSE 'update' END, "
            f"CASE WHEN d.{first} IS NULL THEN NULL ELSE {_image('d', columns)} END, "
            f"CASE WHEN i.{first} IS NULL THEN NULL ELSE {_image('i', columns)} END "
            f"FROM inserted AS i FULL OUTER JOIN deleted AS d ON {on}; END")


def columns_digest(columns: list[tuple[str, str, str]]) -> str:
    """A digest of a table's columns and their types, as a capture trigger made for them carries it."""
    return hashlib.sha256("\0".join(f"{n}\1{b}\1{o}" for n, b, o in columns).encode()).hexdigest()[:16]


def logged_digest(definition: str | None) -> str | None:
    """The digest of the columns a capture trigger's text says it logs (None: no mark)."""
    if not definition or COLUMNS_MARK not in definition:
        return None
    return definition.split(COLUMNS_MARK, 1)[1].split(" ", 1)[0]


def enable_trigger(table: str) -> str:
    """A disabled trigger stays disabled through CREATE OR ALTER: `cdc install` enables it."""
    return f"ENABLE TRIGGER {quote(trigger_name(table))} ON {quote(table)}"


def drop_trigger(table: str) -> str:
    return f"DROP TRIGGER IF EXISTS {quote(trigger_name(table))}"


def read_changelog(tables: int) -> str:
    """The changelog rows of epochs in (?, ?] of ``tables`` tables (bound after), in epoch and id order."""
    marks = ", ".join("?" * tables)
    return (f"SELECT id, epoch AS txid, tbl, op, [before], [after], changed_at FROM {CHANGELOG} "
            f"WHERE epoch > ? AND epoch <= ? AND tbl IN ({marks}) ORDER BY epoch, id")
