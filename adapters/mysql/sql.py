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
                "AND c.TABLE_NAME = :table AND (c.DATA_TYPE = 'json' OR EXISTS (SELECT 1 FROM "
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
    """A name quoted for SQL text PyMySQL formats with parameters, as it does every statement
    SQLAlchemy's exec_driver_sql hands it (an empty set too): a % in the name is doubled."""
    return "`" + name.replace("`", "``").replace("%", "%%") + "`"


def literal(text: str) -> str:
    """A string literal for SQL text PyMySQL formats (see quote): quotes, backslashes and % escaped."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''").replace("%", "%%") + "'"


def as_stored(statement: str) -> str:
    """Driver SQL without parameter markers (a trigger body) as the server keeps it: % once more."""
    return statement.replace("%%", "%")


# -- capture `trigger` (see trigger.py) ----------------------------------------------------
CHANGELOG = "_cdc_changelog"
EPOCH = "_cdc_epoch"
CONSUMERS = "_cdc_consumers"
OPS = {"insert": "INSERT", "update": "UPDATE", "delete": "DELETE"}
CREATE_STATE = [
    f"""CREATE TABLE IF NOT EXISTS {CHANGELOG} (
        id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
        epoch BIGINT NOT NULL,
        tbl VARCHAR(64) NOT NULL,
        op VARCHAR(6) NOT NULL,
        `before` LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
        `after` LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
        changed_at DATETIME(6) NOT NULL,
        KEY {CHANGELOG}_epoch (epoch, id)) ENGINE=InnoDB""",
    f"CREATE TABLE IF NOT EXISTS {EPOCH} (k TINYINT PRIMARY KEY, n BIGINT NOT NULL) ENGINE=InnoDB",
    f"INSERT IGNORE INTO {EPOCH} (k, n) VALUES (1, 1)",
    f"""CREATE TABLE IF NOT EXISTS {CONSUMERS} (pair VARCHAR(200) PRIMARY KEY, tables TEXT NOT NULL,
        acked BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB""",
]
DROP_STATE = [f"DROP TABLE IF EXISTS {t}" for t in (CHANGELOG, EPOCH, CONSUMERS)]
COLUMNS = ("SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
           "AND TABLE_NAME = %(table)s ORDER BY ORDINAL_POSITION")
TRIGGERS = ("SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_STATEMENT FROM information_schema.TRIGGERS "
            "WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME LIKE '\\_cdc\\_%%'")
OLDEST_TRANSACTION = ("SELECT trx_id, trx_mysql_thread_id, TIMESTAMPDIFF(SECOND, trx_started, NOW()) "
                      "FROM information_schema.INNODB_TRX ORDER BY trx_started LIMIT 1")
#: The newest changelog id (ChangelogCapture.idle watches it).
CHANGELOG_MARK = f"SELECT coalesce(max(id), 0) FROM {CHANGELOG}"
#: Register a pair with its tables (SQLAlchemy text: binds :pair, :tables).
REGISTER = (f"INSERT INTO {CONSUMERS} (pair, tables) VALUES (:pair, :tables) "
            "ON DUPLICATE KEY UPDATE tables = VALUES(tables)")
#: Raise a pair's acknowledged epoch (SQLAlchemy text: binds :position, :pair).
ACKNOWLEDGE = f"UPDATE {CONSUMERS} SET acked = GREATEST(acked, :position) WHERE pair = :pair"
PURGEABLE = f"SELECT min(acked) FROM {CONSUMERS}"
#: The next rows to purge, by primary key (binds %(e)s, the epoch every pair acknowledged).
PURGE_IDS = f"SELECT id FROM {CHANGELOG} WHERE epoch <= %(e)s ORDER BY epoch, id LIMIT 5000"
#: The current epoch, the one writers stamp now; its row lock is what a seal takes.
CURRENT_EPOCH = f"SELECT n FROM {EPOCH} WHERE k = 1"
LOGGED_SINCE = f"SELECT 1 FROM {CHANGELOG} WHERE epoch >= %(e)s LIMIT 1"
LOCK_EPOCH_NOWAIT = f"{CURRENT_EPOCH} FOR UPDATE NOWAIT"
LOCK_EPOCH = f"{CURRENT_EPOCH} FOR UPDATE"
NEXT_EPOCH = f"UPDATE {EPOCH} SET n = n + 1 WHERE k = 1"
SHORT_LOCK_WAIT = "SET SESSION innodb_lock_wait_timeout = 1"
DEFAULT_LOCK_WAIT = "SET SESSION innodb_lock_wait_timeout = DEFAULT"
PENDING = f"SELECT count(*) FROM {CHANGELOG} WHERE epoch > %(low)s"
UNLOCK_TABLES = "UNLOCK TABLES"
#: Column types logged as hex, and as utf8mb4 text (and MariaDB's JSON, which is text).
LOGGED_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"}
LOGGED_TEXT = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}


def trigger_name(table: str, op: str) -> str:
    return f"_cdc_{op[0]}_{table}"[:64]


def _logged(image: str, name: str, data_type: str) -> str:
    """The SQL logging one column of NEW/OLD as JSON text, independent of the writer's session
    (its time_zone and character set): TIMESTAMP as epoch seconds, binary as hex, text as utf8mb4."""
    value = f"{image}.{quote(name)}"
    if data_type == "timestamp":
        return f"CAST(UNIX_TIMESTAMP({value}) AS CHAR)"
    if data_type in LOGGED_BINARY:
        return f"HEX({value})"
    if data_type == "bit":
        return f"CAST({value} + 0 AS CHAR)"
    if data_type in LOGGED_TEXT or data_type == "json":
        return f"CAST({value} AS CHAR CHARACTER SET utf8mb4)"  # JSON too: as its text, never nested
    return f"CAST({value} AS CHAR)"  # numbers exact as text, dates/times ISO-like


def trigger_body(table: str, op: str, columns: list[tuple[str, str]]) -> str:
    def image(which: str) -> str:
        pairs = ", ".join(f"{literal(name)}, {_logged(which, name, kind)}" for name, kind in columns)
        return f"JSON_OBJECT({pairs})"

    before = "NULL" if op == "insert" else image("OLD")
    after = "NULL" if op == "delete" else image("NEW")
    return (f"BEGIN DECLARE cdc_epoch BIGINT; "
            f"SELECT n INTO cdc_epoch FROM {EPOCH} WHERE k = 1 LOCK IN SHARE MODE; "
            f"INSERT INTO {CHANGELOG} (epoch, tbl, op, `before`, `after`, changed_at) VALUES "
            f"(cdc_epoch, {literal(table)}, '{op}', {before}, {after}, UTC_TIMESTAMP(6)); END")


def create_trigger(table: str, op: str, columns: list[tuple[str, str]], replace: bool) -> str:
    return (f"CREATE {'OR REPLACE ' if replace else ''}TRIGGER {quote(trigger_name(table, op))} "
            f"AFTER {OPS[op]} ON {quote(table)} FOR EACH ROW {trigger_body(table, op, columns)}")


def drop_trigger(table: str, op: str, if_exists: bool = True) -> str:
    return f"DROP TRIGGER {'IF EXISTS ' if if_exists else ''}{quote(trigger_name(table, op))}"


def lock_table(table: str) -> str:
    return f"LOCK TABLES {quote(table)} WRITE"


def read_rows(tables: int) -> str:
    """The changelog rows of epochs in (%(low)s, %(high)s] of ``tables`` tables %(t0)s, %(t1)s, ..."""
    return (f"SELECT id, epoch AS txid, tbl, op, `before`, `after`, changed_at FROM {CHANGELOG} "
            f"WHERE epoch > %(low)s AND epoch <= %(high)s AND tbl IN ({', '.join(f'%(t{i})s' for i in range(tables))}) "
            "ORDER BY epoch, id")


def purge(ids: list[int]) -> str:
    return f"DELETE FROM {CHANGELOG} WHERE id IN ({', '.join(map(str, ids))})"


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
    names = {r[0] for r in conn.execute(sa.text(JSON_COLUMNS), {"table": table.name})}  # any driver's paramstyle
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


# -- target tables -----------------------------------------------------------------------------
#: Binary, NO PAD collations for text key columns, best first (MariaDB, then MySQL 8).
KEY_COLLATIONS = ("utf8mb4_nopad_bin", "utf8mb4_0900_bin")
NO_PAD_BINARY_COLLATIONS = ("SELECT COLLATION_NAME FROM information_schema.COLLATIONS "
                            "WHERE COLLATION_NAME IN ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')")
