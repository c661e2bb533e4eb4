"""SQL and session settings MySQL/MariaDB need that SQLAlchemy Core does not express."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pymysql.converters
import sqlalchemy as sa
from pymysql.constants import FIELD_TYPE

#: Every session: UTC (TIMESTAMP values are instants), strict (a value that does not fit is an
#: error, never silently cut), 4-byte UTF-8.
SESSION = ("SET SESSION time_zone = '+00:00', "
           "sql_mode = 'STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION', "
           "NAMES utf8mb4 COLLATE utf8mb4_unicode_ci")

#: Where each pooled connection keeps its session's max_allowed_packet (ConnectionPoolEntry.info).
MAX_PACKET = "cdc_max_allowed_packet"

# MariaDB stores JSON as LONGTEXT with a json_valid() CHECK; MySQL has a real JSON type.
JSON_COLUMNS = ("SELECT c.COLUMN_NAME FROM information_schema.COLUMNS c WHERE c.TABLE_SCHEMA = DATABASE() "
                "AND c.TABLE_NAME = %(table)s AND (c.DATA_TYPE = 'json' OR EXISTS (SELECT 1 FROM "
                "information_schema.CHECK_CONSTRAINTS k WHERE k.CONSTRAINT_SCHEMA = c.TABLE_SCHEMA AND "
                "k.TABLE_NAME = c.TABLE_NAME AND k.CHECK_CLAUSE LIKE CONCAT('json_valid(`', c.COLUMN_NAME, '`)')))")

#: Foreign key rules by which InnoDB changes child rows itself (no binlog row events, no triggers).
CASCADING_RULES = ("CASCADE", "SET NULL", "SET DEFAULT")
#: The database's foreign keys that change their child table's rows on a parent's DELETE or UPDATE.
CASCADING_FOREIGN_KEYS = (
    "SELECT TABLE_NAME, CONSTRAINT_NAME, REFERENCED_TABLE_NAME, DELETE_RULE, UPDATE_RULE "
    "FROM information_schema.REFERENTIAL_CONSTRAINTS WHERE CONSTRAINT_SCHEMA = DATABASE() AND "
    "(DELETE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT') OR UPDATE_RULE IN ('CASCADE', 'SET NULL', 'SET DEFAULT')) "
    "ORDER BY TABLE_NAME, CONSTRAINT_NAME")


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


@sa.event.listens_for(sa.Table, "column_reflect")
def _unescaped_name(inspector, table: sa.Table, column_info: dict) -> None:
    """A reflected MySQL/MariaDB column's name as the server has it: SQLAlchemy's MySQL reflection
    (2.1) leaves a backtick in a name doubled, as SHOW CREATE TABLE escapes it (``na``me`` -> na`me),
    so every statement on that column, and a table `cdc init` made from it, would name a column
    that does not exist."""
    if inspector.dialect.name in ("mysql", "mariadb") and "``" in column_info["name"]:
        column_info["name"] = column_info["name"].replace("``", "`")


def _instants(zone: dt.tzinfo):
    """PyMySQL's decoder for DATETIME/TIMESTAMP text, aware in ``zone``: datetime.fromisoformat is C
    code, several times faster than PyMySQL's own regex (the snapshot's main cost after the wire).
    A zero or otherwise invalid date stays the text PyMySQL would have given."""
    def convert(text: str):
        try:
            return dt.datetime.fromisoformat(text).replace(tzinfo=zone)
        except ValueError:
            return text
    return convert


def engine(url: str, source_zone: str = "UTC") -> sa.Engine:
    """An engine whose every connection runs with the SESSION settings and reads DATETIME as
    wall-clock time in ``source_zone`` and TIMESTAMP as UTC, both as aware datetimes."""
    conv = dict(pymysql.converters.conversions)
    conv[FIELD_TYPE.DATETIME] = _instants(ZoneInfo(source_zone))
    conv[FIELD_TYPE.TIMESTAMP] = _instants(dt.timezone.utc)
    made = sa.create_engine(url, pool_pre_ping=True, pool_recycle=3600, connect_args={"conv": conv})

    @sa.event.listens_for(made, "connect")
    def _connect(dbapi_connection, record):
        with dbapi_connection.cursor() as cursor:
            cursor.execute(SESSION)
            # A session's max_allowed_packet is the server's global value when it connected, fixed for its life.
            cursor.execute("SELECT @@max_allowed_packet")
            record.info[MAX_PACKET] = int(cursor.fetchone()[0])

    return made


def error_code(exc: sa.exc.DBAPIError) -> int | None:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def mark_json_columns(conn: sa.Connection, table: sa.Table) -> None:
    """Give MariaDB's JSON columns (LONGTEXT + CHECK json_valid) the JSON type, as MySQL's have."""
    names = {r[0] for r in conn.exec_driver_sql(JSON_COLUMNS, {"table": table.name})}
    for column in table.columns:
        if column.name in names and not isinstance(column.type, sa.JSON):
            column.type = sa.JSON()


# -- snapshot as PostgreSQL COPY text ------------------------------------------------------------
#: information_schema facts about a table's columns, for the COPY text fast path.
COPY_COLUMNS = ("SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE "
                "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %(table)s")
INTEGERS = {"tinyint", "smallint", "mediumint", "int", "bigint"}
_TEXTS = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum"}
_BINARIES = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
# COPY text escapes backslash, newline, carriage return and tab; NULL is \N.
_ESCAPED = r"REPLACE(REPLACE(REPLACE(REPLACE({}, '\\', '\\\\'), '\n', '\\n'), '\r', '\\r'), '\t', '\\t')"


def copy_text_expression(name: str, facts: tuple, target_type: str, utc_datetime: bool) -> str | None:
    """SQL giving one column as PostgreSQL reads it in COPY text format into a column of
    ``target_type`` (format_type), or None when the value needs Python on the way."""
    data_type, column_type, precision, scale = facts
    c = quote(name)
    if data_type in INTEGERS:
        unsigned = "unsigned" in column_type
        widths = {"smallint": ("tinyint",) + (() if unsigned else ("smallint",)),
                  "integer": ("tinyint", "smallint", "mediumint") + (() if unsigned else ("int",)),
                  "bigint": ("tinyint", "smallint", "mediumint", "int") + (() if unsigned else ("bigint",))}
        fits = target_type.startswith("numeric") or data_type in widths.get(target_type, ())
        return f"CAST({c} AS CHAR)" if fits else None
    if data_type == "decimal":
        same = target_type in ("numeric", f"numeric({precision},{scale})")
        return f"CAST({c} AS CHAR)" if same else None
    if data_type in ("datetime", "timestamp") and target_type == "timestamp with time zone":
        # TIMESTAMP is read in the session's UTC; DATETIME only when the pair reads it as UTC.
        return f"CONCAT(CAST({c} AS CHAR), '+00')" if data_type == "timestamp" or utc_datetime else None
    if data_type == "date" and target_type == "date":
        return f"CAST({c} AS CHAR)"
    if data_type in _TEXTS and (target_type == "text" or target_type.startswith(("character varying", "character("))):
        return _ESCAPED.format(f"CAST({c} AS CHAR CHARACTER SET utf8mb4)")
    if data_type in _BINARIES and target_type == "bytea":
        return r"CONCAT('\\\\x', LOWER(HEX(" + c + ")))"
    return None


def copy_text_query(table: str, expressions: list[str], key: tuple[str, ...], after: bool, limit: int) -> str:
    """One keyed chunk of rows, each one line of COPY text (NULL as \\N, tab-separated)."""
    keys = ", ".join(quote(k) for k in key)
    line = "CONCAT_WS('\\t', " + ", ".join(f"IFNULL({e}, '\\\\N')" for e in expressions) + ")"
    where = f" WHERE ({keys}) > ({', '.join(['%s'] * len(key))})" if after else ""
    return f"SELECT {line} FROM {quote(table)}{where} ORDER BY {keys} LIMIT {int(limit)}"


# -- capture `binlog` and `timestamp` (binlog.py, _transactions.py, source.py) ----------------------
BINLOG_SETTINGS = ("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format', 'binlog_row_image', "
                   "'binlog_row_metadata')")
GRANTS = "SHOW GRANTS"
MASTER_STATUS = "SHOW MASTER STATUS"
BINARY_LOGS = "SHOW BINARY LOGS"
#: The server a binlog belongs to: MySQL's server_uuid, MariaDB's server_id.
SERVER_IDENTITY = "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('server_uuid', 'server_id')"
#: MariaDB's GTID state at a binlog file and position (NULL when it cannot read the binlog up to there).
GTID_STATE_AT = "SELECT BINLOG_GTID_POS(%(file)s, %(pos)s)"
REPEATABLE_READ = "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ"
CONSISTENT_SNAPSHOT = "START TRANSACTION WITH CONSISTENT SNAPSHOT"
#: MariaDB: the binlog position a consistent-snapshot transaction sees (binlog_snapshot_file/position).
SNAPSHOT_STATUS = "SHOW STATUS LIKE 'binlog_snapshot_%%'"
READ_LOCK = "FLUSH TABLES WITH READ LOCK"
UNLOCK_TABLES = "UNLOCK TABLES"
#: Of ``:names`` (tables of the pair's database), the views and the tables with triggers.
VIEWS_OR_TRIGGERED = ("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
                      "AND TABLE_TYPE = 'VIEW' AND TABLE_NAME IN :names UNION SELECT EVENT_OBJECT_TABLE FROM "
                      "information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE IN :names")
#: The server's clock as epoch seconds (NOW() is a DATETIME, which the driver reads in source_timezone).
SOURCE_CLOCK = "SELECT UNIX_TIMESTAMP(NOW(6))"


def event_at(position: int) -> str:
    """The first binlog event at ``position`` of the file %(file)s (SHOW BINLOG EVENTS takes no
    parameter for the position: it is written in as an integer)."""
    return f"SHOW BINLOG EVENTS IN %(file)s FROM {int(position)} LIMIT 1"
