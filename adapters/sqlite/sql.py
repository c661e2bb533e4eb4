"""SQL text SQLite needs that SQLAlchemy Core does not express: the capture changelog and triggers."""

from __future__ import annotations

import sqlalchemy as sa

CHANGELOG = "_cdc_changelog"
EPOCH = "_cdc_epoch"
CONSUMERS = "_cdc_consumers"
TRIGGER_SUFFIX = {"insert": "ai", "update": "au", "delete": "ad"}
#: Every capture trigger's text, as `cdc install` wrote it (or RENAME COLUMN/TABLE rewrote it).
TRIGGER_TEXTS = "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_cdc\\_%' ESCAPE '\\'"
#: Every capture trigger and the table it is attached to (a renamed table takes its triggers along).
TRIGGERS = "SELECT name, tbl_name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '\\_cdc\\_%' ESCAPE '\\'"
#: The function each timestamp-capture connection registers: ISO 8601 text -> epoch seconds, or NULL.
INSTANT_FUNCTION = "cdc_instant"
#: julianday('1970-01-01 00:00:00'): epoch seconds / 86400 + this is a Julian day number.
UNIX_EPOCH_JULIAN_DAY = 2440587.5

CREATE_STATE = [
    f"""CREATE TABLE IF NOT EXISTS {CHANGELOG} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        txid INTEGER NOT NULL,
        tbl TEXT NOT NULL,
        op TEXT NOT NULL,
        before TEXT,
        after TEXT,
        changed_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')))""",
    # Writers are serialised in SQLite, so every row one transaction logs carries the same
    # epoch; the reader bumps the epoch and reads only older epochs, which are committed whole.
    f"CREATE TABLE IF NOT EXISTS {EPOCH} (n INTEGER NOT NULL)",
    f"INSERT INTO {EPOCH} (n) SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM {EPOCH})",
    f"""CREATE TABLE IF NOT EXISTS {CONSUMERS} (
        pair TEXT PRIMARY KEY, tables TEXT NOT NULL, acked_id INTEGER NOT NULL DEFAULT 0)""",
]
# SQLite creates sqlite_sequence for AUTOINCREMENT and never lets it be dropped; we remove our row.
#: The newest changelog id SQLite ever handed out (AUTOINCREMENT never hands one out again).
NEWEST_ID = f"SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = '{CHANGELOG}'), 0)"
DROP_STATE = [f"DROP TABLE IF EXISTS {t}" for t in (CHANGELOG, EPOCH, CONSUMERS)] + [
    f"DELETE FROM sqlite_sequence WHERE name = '{CHANGELOG}'"]


def quote(name: str) -> str:
    """A quoted SQLite identifier (names come from reflection, never from row data)."""
    return '"' + name.replace('"', '""') + '"'


def trigger_name(table: str, op: str) -> str:
    return f"_cdc_{table}_{TRIGGER_SUFFIX[op]}"


def _logged(prefix: str, column: sa.Column) -> str:
    ref = f"{prefix}.{quote(column.name)}"
    kind = column.type
    if isinstance(kind, sa.LargeBinary):
        return f"CASE WHEN {ref} IS NULL THEN NULL ELSE hex({ref}) END"
    if isinstance(kind, sa.Float):
        return f"CASE typeof({ref}) WHEN 'real' THEN printf('%!.17g', {ref}) ELSE {ref} END"
    if isinstance(kind, sa.Numeric):
        # As text, so JSON never carries an exact amount as a float.
        return f"CAST({ref} AS TEXT)"
    return ref


def _image(prefix: str, columns: list[sa.Column]) -> str:
    pairs = ", ".join(f"'{c.name.replace(chr(39), chr(39) * 2)}', {_logged(prefix, c)}" for c in columns)
    return f"json_object({pairs})"


def create_triggers(table: str, columns: list[sa.Column]) -> list[str]:
    """DROP + CREATE of the three capture triggers of one table, from its current columns."""
    images = {"insert": ("NULL", _image("NEW", columns)),
              "update": (_image("OLD", columns), _image("NEW", columns)),
              "delete": (_image("OLD", columns), "NULL")}
    statements = drop_triggers(table)
    for op, (before, after) in images.items():
        statements.append(
            f"CREATE TRIGGER {quote(trigger_name(table, op))} AFTER {op.upper()} ON {quote(table)} BEGIN "
            f"INSERT INTO {CHANGELOG} (txid, tbl, op, before, after) VALUES "
            f"((SELECT n FROM {EPOCH}), '{table.replace(chr(39), chr(39) * 2)}', '{op}', {before}, {after}); END"
        )
    return statements


def trigger_names(table: str) -> list[str]:
    return [trigger_name(table, op) for op in TRIGGER_SUFFIX]


def drop_triggers(table: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {quote(trigger_name(table, op))}" for op in TRIGGER_SUFFIX]


# -- capture `trigger`: registration, reads and purge ------------------------------------
#: Register a pair with its tables (SQLAlchemy text: binds :pair, :tables).
REGISTER = (f"INSERT INTO {CONSUMERS} (pair, tables) VALUES (:pair, :tables) "
            "ON CONFLICT (pair) DO UPDATE SET tables = excluded.tables")
GENERATION = f"SELECT generation FROM {CONSUMERS} WHERE pair = ?"
ACKNOWLEDGED = f"SELECT acked_id FROM {CONSUMERS} WHERE pair = ?"
#: Raise a pair's acknowledged id (SQLAlchemy text: binds :position, :pair).
ACKNOWLEDGE = f"UPDATE {CONSUMERS} SET acked_id = max(acked_id, :position) WHERE pair = :pair"
PURGE = f"DELETE FROM {CHANGELOG} WHERE id <= (SELECT min(acked_id) FROM {CONSUMERS})"
LOGGED_AT = f"SELECT changed_at FROM {CHANGELOG} WHERE id = ?"
HELD = f"SELECT count(*) FROM {CHANGELOG} WHERE id > ? AND id <= ?"
#: A read seals the current epoch: every writer that logs after it stamps the next one.
SEAL = [f"UPDATE {EPOCH} SET n = n + 1", f"SELECT n FROM {EPOCH}"]


def read_rows(tables: int, rest: bool) -> str:
    """Up to ? changelog rows after id ? of epochs before ? (``rest``: of epoch ?) of ``tables`` tables."""
    return (f"SELECT id, txid, tbl, op, before, after, changed_at FROM {CHANGELOG} "
            f"WHERE id > ? AND txid {'=' if rest else '<'} ? AND tbl IN ({', '.join('?' * tables)}) "
            "ORDER BY id LIMIT ?")


def pending(tables: int) -> str:
    return f"SELECT count(*) FROM {CHANGELOG} WHERE id > ? AND tbl IN ({', '.join('?' * tables)})"


def index_list(table: str) -> str:
    return f'PRAGMA index_list("{table}")'


def index_info(index: str) -> str:
    return f'PRAGMA index_info("{index}")'
