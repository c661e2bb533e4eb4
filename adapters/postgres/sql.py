"""SQL PostgreSQL needs that SQLAlchemy Core does not express: slots, publications, decoding."""

from __future__ import annotations

import functools
import re

# Every value pgoutput sends is text made by the type's output function in OUR session:
# fix the settings those functions depend on.
DECODING_SETTINGS = [
    "SET LOCAL TimeZone = 'UTC'",
    "SET LOCAL DateStyle = 'ISO, YMD'",
    "SET LOCAL IntervalStyle = 'iso_8601'",
    "SET LOCAL extra_float_digits = 3",
    "SET LOCAL bytea_output = 'hex'",
]
PEEK = ("SELECT data FROM pg_logical_slot_peek_binary_changes(%(slot)s, NULL, %(limit)s, "
        "'proto_version', '1', 'publication_names', %(publication)s)")
SLOT = ("SELECT slot_name, plugin, database, active, wal_status, "
        "confirmed_flush_lsn - '0/0'::pg_lsn AS confirmed, restart_lsn - '0/0'::pg_lsn AS restart "
        "FROM pg_replication_slots WHERE slot_name = %(slot)s")
#: Who streams the slot now: the walsender's pid and seconds since its client last replied (or
#: since it started, before a first reply).
SLOT_USER = ("SELECT s.active_pid AS pid, extract(epoch FROM now() - coalesce(r.reply_time, r.backend_start)) AS silent "
             "FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid "
             "WHERE s.slot_name = %(slot)s AND s.active")
TERMINATE = "SELECT pg_terminate_backend(%(pid)s)"
CREATE_SLOT = "SELECT pg_create_logical_replication_slot(%(slot)s, 'pgoutput')"
DROP_SLOT = "SELECT pg_drop_replication_slot(%(slot)s)"
ADVANCE = "SELECT pg_replication_slot_advance(%(slot)s, %(lsn)s::pg_lsn)"
CURRENT_LSN = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
FLUSHED_LSN = "SELECT pg_current_wal_flush_lsn() - '0/0'::pg_lsn"
PUBLICATION_EXISTS = "SELECT 1 FROM pg_publication WHERE pubname = %(publication)s"
# The capture generation of a logical pair lives in its publication's comment (see LogicalSource).
PUBLICATION_COMMENT = ("SELECT obj_description(oid, 'pg_publication') FROM pg_publication "
                       "WHERE pubname = %(publication)s")
GENERATION_PREFIX = "cdc-sync capture generation "
PUBLISHED_TABLES = ("SELECT tablename FROM pg_publication_tables WHERE pubname = %(publication)s "
                    "AND schemaname = current_schema()")
REPLICA_IDENTITY = ("SELECT relreplident FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relname = %(table)s AND n.nspname = current_schema()")


def object_name(pair: str) -> str:
    """The slot and publication name of a pair: cdc_<pair>, in the characters slot names allow."""
    return ("cdc_" + re.sub(r"[^a-z0-9_]", "_", pair.lower()))[:63]


def quote(name: str) -> str:
    """A name quoted for SQL text the driver reads for parameter markers, as it reads every
    statement SQLAlchemy's exec_driver_sql hands it (with parameters or an empty set): a % in the
    name is doubled, so it is no marker. Raw-cursor statements (COPY) are given parameters too."""
    return quoted_name(name).replace("%", "%%")


def quoted_name(name: str) -> str:
    """A name quoted as PostgreSQL reads it, for a parameter value (``%(table)s::regclass``) or a
    replication command (which no driver reads for markers)."""
    return '"' + name.replace('"', '""') + '"'


def create_publication(publication: str, tables: list[str]) -> str:
    """A partitioned table's changes are published under its own name, not its partitions' (so the
    pair sees the table it names, and pg_publication_tables lists it)."""
    return (f"CREATE PUBLICATION {quote(publication)} FOR TABLE {', '.join(quote(t) for t in tables)} "
            "WITH (publish_via_partition_root = true)")


def publish_via_root(publication: str) -> str:
    """For a publication made before create_publication set it."""
    return f"ALTER PUBLICATION {quote(publication)} SET (publish_via_partition_root = true)"


def set_publication_tables(publication: str, tables: list[str]) -> str:
    return f"ALTER PUBLICATION {quote(publication)} SET TABLE {', '.join(quote(t) for t in tables)}"


def comment_generation(publication: str, generation: str) -> str:
    """COMMENT ON PUBLICATION naming its generation (a hex uuid we made: no quoting needed beyond it)."""
    if not generation.isalnum():
        raise ValueError("a generation is a hex uuid")
    return f"COMMENT ON PUBLICATION {quote(publication)} IS '{GENERATION_PREFIX}{generation}'"


def drop_publication(publication: str) -> str:
    return f"DROP PUBLICATION IF EXISTS {quote(publication)}"


def lsn_text(lsn: int) -> str:
    """An LSN as PostgreSQL writes it (X/Y)."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_int(text: str) -> int:
    """An LSN written X/Y as an int."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def stage(name: str, table: str, columns: list[str]) -> str:
    """A temporary table with the columns' types and no constraints, gone at COMMIT."""
    return (f"CREATE TEMP TABLE {quote(name)} ON COMMIT DROP AS SELECT {', '.join(quote(c) for c in columns)} "
            f"FROM {quote(table)} WITH NO DATA")


def copy_into(table: str, columns: list[str]) -> str:
    """Run on the raw cursor without parameters: names as PostgreSQL reads them (no % doubled)."""
    return f"COPY {quoted_name(table)} ({', '.join(quoted_name(c) for c in columns)}) FROM STDIN"


def upsert_from(table: str, stage_name: str, columns: list[str], key: tuple[str, ...]) -> str:
    names = ", ".join(quote(c) for c in columns)
    updates = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in columns if c not in key)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    return (f"INSERT INTO {quote(table)} ({names}) SELECT {names} FROM {quote(stage_name)} "
            f"ON CONFLICT ({', '.join(quote(k) for k in key)}) {action}")


@functools.lru_cache(maxsize=256)
def upsert_values(table: str, columns: tuple[str, ...], key: tuple[str, ...] | None, rows: int) -> str:
    """An upsert of ``rows`` rows as one statement, positional parameters row after row (each row's
    values are coerced to the columns' types as in a one-row INSERT); ``key`` None: a plain INSERT
    (new rows only: a key that exists fails it)."""
    row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    names = ", ".join(quote(c) for c in columns)
    if key is None:
        return f"INSERT INTO {quote(table)} ({names}) VALUES {', '.join([row] * rows)}"
    updates = ", ".join(f"{quote(c)} = EXCLUDED.{quote(c)}" for c in columns if c not in key)
    action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
    return (f"INSERT INTO {quote(table)} ({names}) VALUES {', '.join([row] * rows)} "
            f"ON CONFLICT ({', '.join(quote(k) for k in key)}) {action}")


def rows_by_key(table: str, columns: list[str], key: tuple[str, ...], key_types: list[str]) -> str:
    """The rows of ``table`` whose ``key`` is one of the keys passed as one array per key column
    (binary parameters %(k0)b, ...: of the types ``key_types``), each key joined LATERAL to its row
    (one primary-key lookup per key whatever the statistics say) and locked FOR UPDATE; the
    ``columns`` in their order."""
    arrays = ", ".join(f"%(k{i})b::{kind}[]" for i, kind in enumerate(key_types))
    names = ", ".join(quote(k) for k in key)
    match = " AND ".join(f"t.{quote(k)} = wanted.{quote(k)}" for k in key)
    return (f"SELECT {', '.join('found.' + quote(c) for c in columns)} FROM unnest({arrays}) AS wanted({names}) "
            f"CROSS JOIN LATERAL (SELECT t.* FROM {quote(table)} AS t WHERE {match} LIMIT 1 FOR UPDATE OF t) AS found")


@functools.lru_cache(maxsize=256)
def delete_keys(table: str, key: tuple[str, ...], rows: int) -> str:
    """A delete of ``rows`` key values as one statement, positional parameters key after key."""
    row = "(" + ", ".join(["%s"] * len(key)) + ")"
    return (f"DELETE FROM {quote(table)} WHERE ({', '.join(quote(k) for k in key)}) "
            f"IN ({', '.join([row] * rows)})")


def delete_using(table: str, stage_name: str, key: tuple[str, ...]) -> str:
    match = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in key)
    return f"DELETE FROM {quote(table)} t USING {quote(stage_name)} s WHERE {match}"


COLUMN_OIDS = ("SELECT attname, atttypid::int FROM pg_attribute "
               "WHERE attrelid = to_regclass(%(table)s) AND attnum > 0 AND NOT attisdropped")
COLUMN_TYPES = ("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = to_regclass(%(table)s) AND attnum > 0 AND NOT attisdropped")


def copy_out(table: str, columns: list[str], key: tuple[str, ...], after: bool, limit: int) -> str:
    """COPY of one keyed chunk in binary; ``after``: the statement takes the previous last key as %s
    params (the driver then reads it for markers: names with % doubled), else it takes none."""
    name = quote if after else quoted_name
    names = ", ".join(name(c) for c in columns)
    keys = ", ".join(name(k) for k in key)
    where = f" WHERE ({keys}) > ({', '.join(['%s'] * len(key))})" if after else ""
    return (f"COPY (SELECT {names} FROM {name(table)}{where} ORDER BY {keys} LIMIT {int(limit)}) "
            "TO STDOUT (FORMAT binary)")


def copy_in_binary(table: str, columns: list[str]) -> str:
    """Run on the raw cursor without parameters (see copy_into)."""
    return f"COPY {quoted_name(table)} ({', '.join(quoted_name(c) for c in columns)}) FROM STDIN (FORMAT binary)"


def edge_key(stage_name: str, key: tuple[str, ...], last: bool) -> str:
    keys = ", ".join(quote(k) + (" DESC" if last else "") for k in key)
    return f"SELECT {', '.join(quote(k) for k in key)} FROM {quote(stage_name)} ORDER BY {keys} LIMIT 1"


# -- capture `trigger` ------------------------------------------------------------------
CHANGELOG = "_cdc_changelog"
CONSUMERS = "_cdc_consumers"
CAPTURE_FUNCTION = "_cdc_capture"
TRIGGER = "_cdc_capture"
DATABASE_OID = "SELECT oid::bigint FROM pg_database WHERE datname = current_database()"
TRUNCATE_TRIGGER = "_cdc_capture_truncate"
CREATE_TRIGGER_STATE = [
    f"""CREATE TABLE IF NOT EXISTS {CHANGELOG} (
        id bigserial PRIMARY KEY,
        txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        tbl text NOT NULL,
        op text NOT NULL,
        before jsonb,
        after jsonb,
        changed_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
    f"CREATE INDEX IF NOT EXISTS {CHANGELOG}_txid ON {CHANGELOG} (txid)",
    f"CREATE TABLE IF NOT EXISTS {CONSUMERS} (pair text PRIMARY KEY, tables jsonb NOT NULL, acked bigint NOT NULL DEFAULT 0)",
    f"""CREATE OR REPLACE FUNCTION {CAPTURE_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO {CHANGELOG} (tbl, op, before, after) VALUES (TG_TABLE_NAME, lower(TG_OP),
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END, CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
        RETURN NULL;
    END $$""",
]
DROP_TRIGGER_STATE = [f"DROP TABLE IF EXISTS {CHANGELOG}", f"DROP TABLE IF EXISTS {CONSUMERS}",
                      f"DROP FUNCTION IF EXISTS {CAPTURE_FUNCTION}()"]
# Every transaction below the oldest one still running has ended: its rows are final.
SNAPSHOT = "SELECT pg_current_snapshot()::text"
# No horizon can lie past the next transaction id to be assigned.
NEXT_TRANSACTION_ID = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
# What committed after the snapshot ``done`` and up to the snapshot ``window`` (the rows a read's
# own snapshot sees are of committed transactions), in the order each transaction's last change
# was logged, from the transaction after ``through`` on: for two that touched the same row, the
# second waited for the first to commit, so this order agrees with commit order.
WINDOW = (f"SELECT * FROM (SELECT id, txid::text::bigint AS txid, tbl, op, before::text AS before, "
          f"after::text AS after, changed_at, max(id) OVER (PARTITION BY txid) AS last FROM {CHANGELOG} "
          f"WHERE txid >= %(low)s::text::xid8 AND NOT pg_visible_in_snapshot(txid, %(done)s::pg_snapshot) "
          f"AND pg_visible_in_snapshot(txid, %(window)s::pg_snapshot) AND tbl = ANY(%(tables)s)) w "
          f"WHERE last > %(through)s ORDER BY last, id")
APPLIED_OF_WINDOW = f"SELECT count(*) FROM ({WINDOW.replace('WHERE last >', 'WHERE last <=')}) applied"
# The transactions a read takes, of the same window in the same order, without their rows: the
# first ones until the one that brings the read to %(limit)s changes, each with its last change
# and (``remaining``) how many are left in the window in all. A read of a large window so sorts
# narrow (transaction, id) pairs, not every row's images, however many reads the window takes.
NEXT_TRANSACTIONS = (
    f"SELECT txid, last, remaining FROM (SELECT txid, last, sum(n) OVER (ORDER BY last) - n AS before, "
    f"count(*) OVER () AS remaining FROM (SELECT txid::text::bigint AS txid, max(id) AS last, count(*) AS n "
    f"FROM {CHANGELOG} WHERE txid >= %(low)s::text::xid8 AND NOT pg_visible_in_snapshot(txid, %(done)s::pg_snapshot) "
    f"AND pg_visible_in_snapshot(txid, %(window)s::pg_snapshot) AND tbl = ANY(%(tables)s) GROUP BY txid "
    f"HAVING max(id) > %(through)s) t) s WHERE before < %(limit)s ORDER BY last")
# The rows of those transactions, in the window's order.
ROWS_OF = (f"SELECT c.id, c.txid::text::bigint AS txid, c.tbl, c.op, c.before::text AS before, c.after::text AS after, "
           f"c.changed_at, t.last FROM unnest(%(txids)s::bigint[], %(lasts)s::bigint[]) AS t(txid, last) "
           f"JOIN {CHANGELOG} c ON c.txid = t.txid::text::xid8 WHERE c.tbl = ANY(%(tables)s) ORDER BY t.last, c.id")
# The oldest transaction with a transaction id: changes after it wait until it ends.
OLDEST_TRANSACTION = ("SELECT pid, usename, backend_xid::text AS xid, "
                      "extract(epoch FROM clock_timestamp() - xact_start) AS seconds FROM pg_stat_activity "
                      "WHERE backend_xid IS NOT NULL ORDER BY age(backend_xid) DESC LIMIT 1")
PENDING = (f"SELECT count(*) FROM {CHANGELOG} WHERE txid >= %(low)s::text::xid8 "
           f"AND NOT pg_visible_in_snapshot(txid, %(done)s::pg_snapshot) AND tbl = ANY(%(tables)s)")
#: Moves with every changelog id handed out (ChangelogCapture.idle watches it).
CHANGELOG_MARK = f"SELECT last_value FROM {CHANGELOG}_id_seq"
#: Register a pair with its tables (SQLAlchemy text: binds :pair, :tables).
REGISTER = (f"INSERT INTO {CONSUMERS} (pair, tables) VALUES (:pair, :tables) "
            "ON CONFLICT (pair) DO UPDATE SET tables = excluded.tables")
#: Raise a pair's acknowledged horizon (SQLAlchemy text: binds :position, :pair).
ACKNOWLEDGE = f"UPDATE {CONSUMERS} SET acked = greatest(acked, :position) WHERE pair = :pair"
#: Every transaction below the horizon all pairs acknowledged is applied everywhere.
PURGE = f"DELETE FROM {CHANGELOG} WHERE txid < (SELECT min(acked) FROM {CONSUMERS})::text::xid8"
#: The column of the consumers table that names the database (pg_database.oid) the pair was
#: installed in, or last copied from.
DATABASE_COLUMN = "database_oid"
ADD_DATABASE_COLUMN = f"ALTER TABLE {CONSUMERS} ADD COLUMN IF NOT EXISTS {DATABASE_COLUMN} bigint"
RECORD_DATABASE = f"UPDATE {CONSUMERS} SET {DATABASE_COLUMN} = ({DATABASE_OID}) WHERE pair = %(pair)s"
RECORD_DATABASE_ONCE = f"{RECORD_DATABASE} AND {DATABASE_COLUMN} IS NULL"
RECORDED_DATABASE = f"SELECT {DATABASE_COLUMN}, ({DATABASE_OID}) FROM {CONSUMERS} WHERE pair = %(pair)s"

def create_trigger(table: str) -> list[str]:
    """The capture trigger of ``table``, made (again) and set to fire ALWAYS: an ordinary trigger
    does not fire in a session with session_replication_role = replica (a restore, a replication
    tool), whose changes would go unlogged. Idempotent."""
    return [f"CREATE OR REPLACE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE ON {quote(table)} "
            f"FOR EACH ROW EXECUTE FUNCTION {CAPTURE_FUNCTION}()",
            f"ALTER TABLE {quote(table)} ENABLE ALWAYS TRIGGER {TRIGGER}",
            # TRUNCATE fires no row trigger: a statement trigger logs it (op 'truncate'), and the pair stops there.
            f"CREATE OR REPLACE TRIGGER {TRUNCATE_TRIGGER} AFTER TRUNCATE ON {quote(table)} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {CAPTURE_FUNCTION}()",
            f"ALTER TABLE {quote(table)} ENABLE ALWAYS TRIGGER {TRUNCATE_TRIGGER}"]


#: Per table: how its capture trigger fires (pg_trigger.tgenabled, NULL when it has none) and
#: whether it calls the capture function. The trigger must be on that very table (tgrelid).
TRIGGER_STATES = (f"SELECT name, t.tgenabled::text AS enabled, t.tgfoid = to_regprocedure('{CAPTURE_FUNCTION}()') "
                  f"AS ours FROM unnest(%(tables)s::text[]) AS name LEFT JOIN pg_trigger t "
                  f"ON t.tgrelid = to_regclass(quote_ident(name)) AND t.tgname = '{TRIGGER}'")
#: What a tgenabled other than 'A' (ALWAYS) means for capture.
TRIGGER_ENABLED = {"D": "is disabled", "O": "does not fire in sessions with session_replication_role = replica",
                   "R": "fires only in sessions with session_replication_role = replica"}


def drop_trigger(table: str) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {name} ON {quote(table)}" for name in (TRIGGER, TRUNCATE_TRIGGER)]


# -- capture `logical`: checks, doctor and the exported snapshot (logical.py, _logical_doctor.py) --
WAL_LEVEL = "SHOW wal_level"
SLOTS_IN_USE = "SELECT (SELECT count(*) FROM pg_replication_slots), current_setting('max_replication_slots')::int"
WAL_SENDERS_IN_USE = "SELECT current_setting('max_wal_senders')::int, (SELECT count(*) FROM pg_stat_replication)"
MAY_REPLICATE = "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user"
MAY_SELECT = "SELECT has_table_privilege(%(table)s, 'SELECT')"
#: How many of a table's columns may be stored out of line (TOAST): an update that leaves them
#: unchanged does not send them.
TOASTABLE_COLUMNS = ("SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_type t ON "
                     "t.oid = a.atttypid WHERE c.relname = %(table)s AND a.attnum > 0 AND NOT a.attisdropped "
                     "AND t.typstorage <> 'p'")
#: A table's generated columns (``table`` quoted, see quote): pgoutput does not send their values.
GENERATED_COLUMNS = ("SELECT attname FROM pg_attribute WHERE attrelid = %(table)s::regclass AND attnum > 0 "
                     "AND NOT attisdropped AND attgenerated <> ''")
REPEATABLE_READ = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"


def set_snapshot(name: str) -> str:
    """Read as of the snapshot a replication slot exported (``name`` comes from the server, never a user)."""
    return f"SET TRANSACTION SNAPSHOT '{name}'"
#: Session settings of a replication connection: the walsender formats values with them (pgoutput
#: sends text), so they are what types.py reads.
REPLICATION_SESSION = ["SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET IntervalStyle = 'iso_8601'",
                       "SET extra_float_digits = 3", "SET bytea_output = 'hex'"]


def create_replication_slot(slot: str) -> str:
    """The replication command that creates the pair's slot and exports the snapshot it starts at."""
    return f"CREATE_REPLICATION_SLOT {quoted_name(slot)} LOGICAL pgoutput EXPORT_SNAPSHOT"


def start_replication(slot: str, publication: str, start: int) -> str:
    """The replication command that streams the slot from the LSN ``start`` (pgoutput, protocol 1)."""
    return (f"START_REPLICATION SLOT {quoted_name(slot)} LOGICAL {lsn_text(start)} "
            f"(proto_version '1', publication_names '{quoted_name(publication)}')")


# -- install next to the application's writers ------------------------------------------------
#: A lock install waits for longer than this gives up (and install tries again): it never holds
#: its locks long enough for an application transaction waiting on them to reach deadlock_timeout.
INSTALL_LOCK_TIMEOUT = "SET LOCAL lock_timeout = '300ms'"
EXISTING_TABLES = "SELECT name FROM unnest(%(tables)s::text[]) AS name WHERE to_regclass(quote_ident(name)) IS NOT NULL"


def lock_tables(tables: list[str]) -> str:
    """Lock ``tables`` as CREATE/DROP TRIGGER will, in one statement, before the changelog is touched."""
    return f"LOCK TABLE {', '.join(quote(t) for t in tables)} IN SHARE ROW EXCLUSIVE MODE"
