"""A table added to (or removed from) a pair that already streams: copied while the others stream.

The pair first copies and streams `entries` (table A). Then `tables:` (or the mapping file) gains a
table B that already has rows, `cdc init` + `cdc install` run, and a writer changes A and B while
`cdc run` copies B chunk by chunk; the run is SIGKILLed once in the middle of B's snapshot and run
again. Both tables must then equal the source row by row, and every change the writer made must
have exactly one audit row.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

import workload

SCHEMAS = {
    "sqlite": """
        CREATE TABLE entries (id INTEGER PRIMARY KEY, account INTEGER NOT NULL, amount NUMERIC(18,2) NOT NULL,
            currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at DATETIME);
        CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance NUMERIC(18,2) NOT NULL);
        CREATE TABLE parties (code VARCHAR(10) NOT NULL, region INTEGER NOT NULL, name TEXT NOT NULL,
            PRIMARY KEY (code, region))""",
    "postgresql": """
        CREATE TABLE entries (id BIGINT PRIMARY KEY, account INTEGER NOT NULL, amount NUMERIC(18,2) NOT NULL,
            currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at TIMESTAMP);
        CREATE TABLE accounts (id BIGINT PRIMARY KEY, name TEXT NOT NULL, balance NUMERIC(18,2) NOT NULL)""",
    "mysql": """
        CREATE TABLE entries (id BIGINT PRIMARY KEY, account INT NOT NULL, amount DECIMAL(18,2) NOT NULL,
            currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at DATETIME(6)) ENGINE=InnoDB;
        CREATE TABLE accounts (id BIGINT PRIMARY KEY, name VARCHAR(200) NOT NULL, balance DECIMAL(18,2) NOT NULL)
            ENGINE=InnoDB""",
}


# -- the databases ---------------------------------------------------------------------------
def kind(db: str) -> str:
    return "postgresql" if db.startswith("postgresql") else "mysql" if db.startswith("mysql") else "sqlite"


def url(db: str) -> str:
    """The config's URL of a database: a path is a SQLite file."""
    return f"sqlite:///{db}" if kind(db) == "sqlite" else db


def execute(db: str, statements: str, params: tuple | None = None, many: list | None = None) -> list:
    """Run SQL (``;``-separated statements, or one with ``params``/``many``) with autocommit; rows of the last."""
    parts = [statements] if params is not None or many is not None else \
        [s for s in statements.split(";") if s.strip()]
    if kind(db) == "sqlite":
        conn = sqlite3.connect(db, timeout=30)
        try:
            with conn:
                for part in parts:
                    cursor = conn.executemany(part, many) if many is not None else conn.execute(part, params or ())
                return cursor.fetchall()
        finally:
            conn.close()
    if kind(db) == "postgresql":
        with psycopg.connect(db, autocommit=True) as conn, conn.cursor() as cursor:
            for part in parts:
                part = part.replace("?", "%s")
                cursor.executemany(part, many) if many is not None else cursor.execute(part, params)
            return cursor.fetchall() if cursor.description else []
    address = sa.engine.make_url(db)
    with pymysql.connect(host=address.host, port=address.port, user=address.username, password=address.password or "",
                         database=address.database, autocommit=True, charset="utf8mb4") as conn:
        with conn.cursor() as cursor:
            cursor.execute("SET time_zone = '+00:00'")
            for part in parts:
                part = part.replace("?", "%s")
                cursor.executemany(part, many) if many is not None else cursor.execute(part, params)
            return list(cursor.fetchall()) if cursor.description else []


def normalized(db: str, query: str) -> list[tuple]:
    """Rows with exact decimals normalised (SQLite's floats read as the decimals they print as) and
    timestamps as naive UTC, so the same data compares equal across database kinds."""
    def value(v: Any) -> Any:
        if isinstance(v, float):
            return Decimal(repr(v)).normalize()
        if isinstance(v, Decimal):
            return v.normalize()
        if isinstance(v, dt.datetime):
            return (v.astimezone(dt.timezone.utc).replace(tzinfo=None) if v.tzinfo else v).isoformat(sep=" ")
        return v
    return [tuple(value(v) for v in row) for row in execute(db, query)]


def same(source: str, target: str, table: str) -> bool:
    """Whether a table keyed by id has the same rows on both sides."""
    query = f"SELECT * FROM {table} ORDER BY id"
    return normalized(source, query) == normalized(target, query)


# -- the tables the writer changes ---------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """A source table the tests change: a new row, or a new value of ``column``, per serial number."""

    name: str
    key: tuple[str, ...]
    row: Callable[[int], tuple]
    column: str
    value: Callable[[int], Any]

    def where(self) -> str:
        return " AND ".join(f"{k} = ?" for k in self.key)


ENTRIES = Table("entries", ("id",), lambda n: (n, 1500 + n % 7, f"{n % 100000}.{n % 100:02d}", "NOK",
                                               f"Bilag {n} æøå", "2024-05-01 12:00:00"),
                "memo", lambda n: f"Endret {n} ø")
ACCOUNTS = Table("accounts", ("id",), lambda n: (n, f"Konto {n} Blåbær", f"{n % 5000}.{n % 100:02d}"),
                 "name", lambda n: f"Kontø {n}")
PARTIES = Table("parties", ("code", "region"), lambda n: (f"P{n:07d}", n % 9 + 1, f"Part {n} æøå"),
                "name", lambda n: f"Partø {n}")


def fill(db: str, table: Table, serials: range) -> None:
    rows = [table.row(n) for n in serials]
    execute(db, f"INSERT INTO {table.name} VALUES ({', '.join('?' * len(rows[0]))})", many=rows)


def change(conn: Any, table: Table, keys: list[tuple], rng: random.Random, serial: int) -> None:
    """One insert, update (always to a new value) or delete of ``table`` in the open transaction."""
    roll = rng.random()
    if roll < 0.4 or len(keys) < 10:
        row = table.row(serial)
        conn.execute(f"INSERT INTO {table.name} VALUES ({', '.join('?' * len(row))})", row)
        keys.append(row[:len(table.key)])
    elif roll < 0.8:
        conn.execute(f"UPDATE {table.name} SET {table.column} = ? WHERE {table.where()}",
                     (table.value(serial), *rng.choice(keys)))
    else:
        conn.execute(f"DELETE FROM {table.name} WHERE {table.where()}", keys.pop(rng.randrange(len(keys))))


def write(db: str, tables: tuple[Table, ...], stop: threading.Event, log: list, seed: int, least: int = 50) -> None:
    """Transactions that each change every one of ``tables`` 1-3 times, until ``stop`` (and at least
    ``least`` of them); ``log`` gets (transaction id or None, {table: changes}) per transaction."""
    rng, serials = random.Random(seed), itertools.count(10_000_000)
    conn = workload.connect(db)
    try:
        keys = {t.name: [tuple(r) for r in conn.execute(f"SELECT {', '.join(t.key)} FROM {t.name}")] for t in tables}
        while len(log) < least or not stop.is_set():
            counts = {}
            with conn:
                for table in tables:
                    counts[table.name] = rng.randint(1, 3)
                    for _ in range(counts[table.name]):
                        change(conn, table, keys[table.name], rng, next(serials))
            log.append((getattr(conn, "last_txid", None), counts))
            time.sleep(0.003)
    finally:
        conn.close()


# -- the pair ---------------------------------------------------------------------------------------
def write_config(ws, source: str, target: str, capture: str, tables: list[str] | None = None,
                 mapping: str | None = None, **options: Any) -> None:
    what = f"    mapping: {mapping}\n" if mapping else f"    tables: [{', '.join(tables)}]\n"
    more = "".join(f"    {k}: {v}\n" for k, v in options.items())
    ws.config.write_text(f"connections:\n  src: {url(source)}\n  dst: {url(target)}\npairs:\n  p:\n    source: src\n"
                         f"    target: dst\n    capture: {capture}\n{what}{more}", encoding="utf-8")


def cdc_ok(ws, *args: str) -> subprocess.CompletedProcess:
    result = ws.cdc(*args, str(ws.config))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def checkpoint(target: str) -> tuple[dict, list]:
    """The pair's snapshot progress per table ({} when none) and its streamed tables."""
    rows = execute(target, "SELECT snapshot, tables FROM cdc_checkpoints WHERE pair = 'p'")
    snapshot, tables = rows[0] if rows else (None, None)
    return (json.loads(snapshot)["tables"] if snapshot else {}), (list(json.loads(tables)) if tables else [])


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def start_run(ws, runs: list) -> subprocess.Popen:
    """`cdc run` (until stopped) in the background, its output in a file of the workspace."""
    with open(ws.root / f"run-{len(runs)}.log", "w") as output:
        runs.append(subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                                     stdout=output, stderr=subprocess.STDOUT))
    return runs[-1]


def statuses(ws, healthy: bool | None = True) -> dict:
    """`cdc status --json`'s tables of the pair; its exit code is 0 if ``healthy`` (not checked: None)."""
    result = ws.cdc("status", "--json", str(ws.config))
    assert healthy is None or (result.returncode == 0) == healthy, result.stdout + result.stderr
    return json.loads(result.stdout)[0]["tables"]


# -- checks ---------------------------------------------------------------------------------------
def assert_each_change_audited_once(target: str, log: list, sources: list[str]) -> None:
    """Every change the writer made has exactly one audit row: per transaction where the source gives
    transaction ids (PostgreSQL, MariaDB), else by count and distinct changelog position (SQLite)."""
    for table in sources:
        made = sum(counts[table] for _, counts in log)
        audited, positions = execute(target, "SELECT count(*), count(DISTINCT source_position) FROM cdc_audit_log "
                                             "WHERE op <> 'snapshot' AND source_table = ?", (table,))[0]
        assert audited == made, f"{table}: {made} changes made, {audited} audit rows"
        if log[0][0] is None:  # SQLite: the changelog id of each change
            assert positions == made, f"{table}: {made - positions} changes applied twice"
        else:
            per_transaction = dict(execute(target, "SELECT source_txid, count(*) FROM cdc_audit_log WHERE "
                                                   "op <> 'snapshot' AND source_table = ? GROUP BY source_txid",
                                           (table,)))
            wrong = [(txid, counts[table], per_transaction.get(str(txid))) for txid, counts in log
                     if per_transaction.get(str(txid)) != counts[table]]
            assert not wrong, f"{table}: transactions applied twice, in part or not at all: {wrong[:5]}"


def assert_copied_while_streaming(target: str, added: str, streaming: str) -> None:
    """Changes to ``streaming`` were applied between the first and the last chunk of ``added``, and
    no chunk of it was copied twice (each chunk's last key is past the one before)."""
    chunks = execute(target, "SELECT id, after FROM cdc_audit_log WHERE op = 'snapshot' AND source_table = ? "
                             "ORDER BY id", (added,))
    assert len(chunks) >= 5, f"{added} was copied in {len(chunks)} chunk(s)"
    between = execute(target, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot' AND source_table = ? "
                              "AND id > ? AND id < ?", (streaming, chunks[0][0], chunks[-1][0]))[0][0]
    assert between > 0, f"{streaming} did not stream while {added} was copied"
    last_keys = [json.loads(after)["last_key"] for _, after in chunks if json.loads(after)["last_key"]]
    assert all(a < b for a, b in zip(last_keys, last_keys[1:])), "a chunk was copied twice or out of order"


# -- add a table while the pair streams, SIGKILL in the middle of its snapshot -----------------------
def add_table_under_load(ws, source: str, target: str, capture: str, added: Table, *, mapping: bool = False,
                         target_name: str | None = None, columns: str = "*") -> None:
    execute(source, SCHEMAS[kind(source)])
    fill(source, ENTRIES, range(1, 301))
    fill(source, added, range(1, 3001))
    chunk = 40
    if mapping:
        (ws.root / "m.yaml").write_text("tables:\n  entries:\n", encoding="utf-8")
        write_config(ws, source, target, capture, mapping="m.yaml", snapshot_chunk=chunk, poll_interval=0.1)
    else:
        write_config(ws, source, target, capture, ["entries"], snapshot_chunk=chunk, poll_interval=0.1)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    assert "snapshot 300 rows" in cdc_ok(ws, "run", "--once").stdout
    assert statuses(ws) == {"entries": {"phase": "streaming"}}

    if mapping:
        (ws.root / "m.yaml").write_text(
            "tables:\n  entries:\n  parties:\n    target: parter\n"
            "    columns: {kode: code, region: region, navn: name}\n", encoding="utf-8")
    else:
        write_config(ws, source, target, capture, ["entries", added.name], snapshot_chunk=chunk, poll_interval=0.1)
    # Before `cdc install` (trigger capture: status exits 1 naming it) the new table is not copied yet.
    assert statuses(ws, healthy=None)[added.name]["phase"] == "not copied yet"
    for command in ("init", "install"):
        cdc_ok(ws, command)

    stop, log, runs = threading.Event(), [], []
    writer = threading.Thread(target=write, args=(source, (ENTRIES, added), stop, log, 5))
    writer.start()
    try:
        first = start_run(ws, runs)
        wait_for(lambda: checkpoint(target)[0].get(added.name, {}).get("rows", 0) >= 5 * chunk,
                 f"five chunks of {added.name}")
        first.send_signal(signal.SIGKILL)
        first.wait()
        progress, streamed = checkpoint(target)
        assert streamed == ["entries"] and not progress[added.name]["done"], (progress, streamed)
        copied = progress[added.name]["rows"]
        assert statuses(ws) == {"entries": {"phase": "streaming"},
                                added.name: {"phase": "snapshotting", "rows_copied": copied}}
        assert f"table {added.name}: snapshotting ({copied:,} rows copied so far)" in cdc_ok(ws, "status").stdout

        second = start_run(ws, runs)
        wait_for(lambda: added.name in checkpoint(target)[1], f"{added.name} to stream", timeout=480)
        time.sleep(0.5)
        stop.set()
        writer.join()
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=120) == 0
    finally:
        stop.set()
        for run in runs:
            if run.poll() is None:
                run.kill()
                run.wait()
    cdc_ok(ws, "run", "--once")

    name = target_name or added.name
    order = ", ".join(added.key)
    target_order = ", ".join(("kode", "region") if mapping else added.key)
    assert same(source, target, "entries")
    source_rows = normalized(source, f"SELECT {columns} FROM {added.name} ORDER BY {order}")
    assert len(source_rows) > 2900
    assert source_rows == normalized(target, f"SELECT * FROM {name} ORDER BY {target_order}"), added.name
    assert_each_change_audited_once(target, log, ["entries", added.name])
    assert_copied_while_streaming(target, added.name, "entries")
    assert checkpoint(target) == ({}, sorted(["entries", added.name]))
    assert statuses(ws) == {"entries": {"phase": "streaming"}, added.name: {"phase": "streaming"}}


def test_sqlite_table_added_to_tables_is_copied_while_entries_stream(ws):
    add_table_under_load(ws, str(ws.root / "source.db"), str(ws.root / "target.db"), "trigger", ACCOUNTS)


def test_sqlite_table_added_to_the_mapping_file_is_copied_while_entries_stream(ws):
    add_table_under_load(ws, str(ws.root / "source.db"), str(ws.root / "target.db"), "trigger", PARTIES,
                         mapping=True, target_name="parter", columns="code, region, name")


def test_postgresql_logical_table_added_is_copied_while_entries_stream(ws, pg_databases):
    add_table_under_load(ws, pg_databases(), pg_databases(), "logical", ACCOUNTS)


def test_mariadb_binlog_table_added_is_copied_while_entries_stream(ws, mysql_url, pg_url):
    add_table_under_load(ws, mysql_url, pg_url, "binlog", ACCOUNTS)


# -- removed tables, capture not installed, timestamp capture, checkpoints from before 0003 -----------
def databases(ws, request, source_kind: str) -> tuple[str, str]:
    """(source, target) of a test pair: SQLite -> SQLite, PostgreSQL -> PostgreSQL, MariaDB -> PostgreSQL."""
    if source_kind == "sqlite":
        return str(ws.root / "source.db"), str(ws.root / "target.db")
    if source_kind == "postgresql":
        make = request.getfixturevalue("pg_databases")
        return make(), make()
    return request.getfixturevalue("mysql_url"), request.getfixturevalue("pg_url")


def synced_pair(ws, source: str, target: str, capture: str, tables: list[str]) -> None:
    """entries and accounts with 20 rows each at the source; the pair copies ``tables``."""
    execute(source, SCHEMAS[kind(source)])
    fill(source, ENTRIES, range(1, 21))
    fill(source, ACCOUNTS, range(1, 21))
    write_config(ws, source, target, capture, tables)
    for command in ("init", "install", "run"):
        cdc_ok(ws, command, *(["--once"] if command == "run" else []))


@pytest.mark.parametrize("source_kind, capture", [("sqlite", "trigger"), ("postgresql", "logical"),
                                                  ("postgresql", "trigger"), ("mysql", "binlog"),
                                                  ("mysql", "trigger")])
def test_a_removed_table_is_no_longer_read_and_is_copied_again_when_added_back(ws, request, source_kind, capture):
    source, target = databases(ws, request, source_kind)
    synced_pair(ws, source, target, capture, ["entries", "accounts"])
    copied = normalized(target, "SELECT * FROM accounts ORDER BY id")
    write_config(ws, source, target, capture, ["entries"])  # `cdc install` not run again
    execute(source, "UPDATE accounts SET name = 'Fjernet ø' WHERE id = 1; DELETE FROM accounts WHERE id = 2; "
                    "INSERT INTO accounts VALUES (99, 'Ny konto', 1.50); "
                    "UPDATE entries SET memo = 'Endret' WHERE id = 3")
    cdc_ok(ws, "run", "--once")
    assert normalized(target, "SELECT * FROM accounts ORDER BY id") == copied, "a removed table's changes were applied"
    assert same(source, target, "entries")
    assert statuses(ws) == {"entries": {"phase": "streaming"}}
    assert checkpoint(target) == ({}, ["entries"])
    # Added back: copied again, with what changed while it was out of the pair; the row deleted
    # meanwhile is not seen by a copy, and the run says how to remove it.
    write_config(ws, source, target, capture, ["entries", "accounts"])
    cdc_ok(ws, "install")
    run = cdc_ok(ws, "run", "--once")
    assert "snapshot 20 rows" in run.stdout
    assert "target table accounts already has rows" in run.stderr and \
        "run `cdc reconcile CONFIG --pair p --table accounts --repair`" in run.stderr, run.stderr
    source_rows = normalized(source, "SELECT * FROM accounts ORDER BY id")
    assert normalized(target, "SELECT * FROM accounts WHERE id <> 2 ORDER BY id") == source_rows
    # `cdc status` keeps saying so (exit 0: the rows may be right) until a repair of the table.
    assert statuses(ws) == {"entries": {"phase": "streaming"}, "accounts": {"phase": "streaming", "old_rows": True}}
    text = cdc_ok(ws, "status").stdout
    assert "warning     accounts: target table accounts had rows before its copy" in text and \
        "`cdc reconcile CONFIG --pair p --table accounts`" in text, text
    cdc_ok(ws, "run", "--once")  # a later run keeps the mark
    assert statuses(ws)["accounts"] == {"phase": "streaming", "old_rows": True}
    repair = ws.cdc("reconcile", "--table", "accounts", "--repair", str(ws.config))
    assert "repair applied 0 upsert(s) and 1 delete(s)" in repair.stdout, repair.stdout + repair.stderr
    assert same(source, target, "accounts") and same(source, target, "entries")
    assert statuses(ws) == {"entries": {"phase": "streaming"}, "accounts": {"phase": "streaming"}}
    assert "had rows before its copy" not in cdc_ok(ws, "status").stdout


@pytest.mark.parametrize("source_kind, capture", [("sqlite", "trigger"), ("postgresql", "logical")])
def test_an_added_table_is_not_copied_before_capture_covers_it(ws, request, source_kind, capture):
    source, target = databases(ws, request, source_kind)
    synced_pair(ws, source, target, capture, ["entries"])
    write_config(ws, source, target, capture, ["entries", "accounts"])
    cdc_ok(ws, "init")
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 1 and "run `cdc install CONFIG`" in result.stderr, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert execute(target, "SELECT count(*) FROM accounts")[0][0] == 0
    assert checkpoint(target) == ({}, ["entries"])
    cdc_ok(ws, "install")
    execute(source, "UPDATE accounts SET name = 'Etter install' WHERE id = 5")
    assert "snapshot 20 rows" in cdc_ok(ws, "run", "--once").stdout
    assert same(source, target, "accounts")


def test_timestamp_capture_copies_an_added_table_once_then_streams_it(ws):
    source, target = str(ws.root / "source.db"), str(ws.root / "target.db")
    execute(source, "CREATE TABLE products (sku VARCHAR(20) PRIMARY KEY, name TEXT NOT NULL, updated_at TEXT NOT NULL);"
                    "CREATE TABLE stock (sku VARCHAR(20) PRIMARY KEY, qty INTEGER NOT NULL, updated_at TEXT NOT NULL);"
                    "INSERT INTO products VALUES ('A-1', 'Brunost', '2024-05-01 10:00:00')")
    execute(source, "INSERT INTO stock VALUES (?, ?, ?)",
            many=[(f"S-{i:04d}", i, f"2024-05-01 10:{i // 60:02d}:{i % 60:02d}") for i in range(150)])
    options = {"timestamp": "{column: updated_at, overlap_seconds: 30}", "snapshot_chunk": 40}
    write_config(ws, source, target, "timestamp", ["products"], **options)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    write_config(ws, source, target, "timestamp", ["products", "stock"], **options)
    for command in ("init", "install"):
        cdc_ok(ws, command)
    assert "snapshot 150 rows, 0 changes applied" in cdc_ok(ws, "run", "--once").stdout
    # The rows are copied by the snapshot, not streamed again as changes (the watermark starts now).
    assert execute(target, "SELECT count(*) FROM cdc_audit_log WHERE source_table = 'stock' AND op <> 'snapshot'") \
        == [(0,)]
    execute(source, "UPDATE stock SET qty = 1000, updated_at = '2024-05-01 11:00:00' WHERE sku = 'S-0007'")
    assert "1 changes applied" in cdc_ok(ws, "run", "--once").stdout
    query = "SELECT * FROM stock ORDER BY sku"
    assert normalized(source, query) == normalized(target, query)
    assert statuses(ws) == {"products": {"phase": "streaming"}, "stock": {"phase": "streaming"}}


def test_a_checkpoint_from_before_0003_keeps_its_tables_and_copies_only_the_added_one(ws):
    source, target = str(ws.root / "source.db"), str(ws.root / "target.db")
    synced_pair(ws, source, target, "trigger", ["entries"])
    execute(source, "INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)", ENTRIES.row(21))
    cdc_ok(ws, "run", "--once")
    execute(target, "UPDATE cdc_checkpoints SET tables = NULL")  # as cdc-sync before 0003 left it
    write_config(ws, source, target, "trigger", ["entries", "accounts"])
    for command in ("init", "install"):
        cdc_ok(ws, command)
    assert "snapshot 20 rows" in cdc_ok(ws, "run", "--once").stdout
    assert same(source, target, "accounts") and same(source, target, "entries")
    chunks = execute(target, "SELECT source_table, count(*) FROM cdc_audit_log WHERE op = 'snapshot' "
                             "GROUP BY source_table ORDER BY 1")
    assert chunks == [("accounts", 1), ("entries", 1)], "entries, copied before the upgrade, was copied again"
    assert checkpoint(target) == ({}, ["accounts", "entries"])


TRIGGERS = {"sqlite": "SELECT name FROM sqlite_master WHERE type = 'trigger'",
            "postgresql": "SELECT tgrelid::regclass::text || '.' || tgname FROM pg_trigger WHERE NOT tgisinternal",
            "mysql": "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = DATABASE()"}


@pytest.mark.parametrize("source_kind", ["sqlite", "postgresql", "mysql"])
def test_trigger_capture_of_a_removed_table_is_taken_down_by_install_and_uninstall(ws, request, source_kind):
    """Triggers left on a table the pair no longer copies log for nobody, and once `cdc uninstall`
    dropped the changelog they make every write to that table fail."""
    source, target = databases(ws, request, source_kind)
    synced_pair(ws, source, target, "trigger", ["entries", "accounts"])
    triggers = lambda: sorted(name for (name,) in execute(source, TRIGGERS[source_kind]))  # noqa: E731
    on_entries = [t for t in triggers() if "entries" in t]
    write_config(ws, source, target, "trigger", ["entries"])
    # Until a run has let go of the table, its checkpoint streams it: the triggers stay.
    assert "kept triggers on accounts" in cdc_ok(ws, "install").stdout and triggers() != on_entries
    cdc_ok(ws, "run", "--once")
    assert "removed trigger" in cdc_ok(ws, "install").stdout and triggers() == on_entries
    cdc_ok(ws, "uninstall")
    assert triggers() == []
    execute(source, "INSERT INTO accounts VALUES (500, 'Etter uninstall', 1.00)")
    # Removed from the config, then uninstalled without an install in between.
    write_config(ws, source, target, "trigger", ["entries", "accounts"])
    cdc_ok(ws, "install")
    write_config(ws, source, target, "trigger", ["entries"])
    cdc_ok(ws, "uninstall")
    assert triggers() == []
    execute(source, "INSERT INTO accounts VALUES (501, 'Etter uninstall', 1.00)")


@pytest.mark.parametrize("source_kind, capture", [("sqlite", "trigger"), ("postgresql", "logical"),
                                                  ("mysql", "trigger")])
def test_a_table_removed_and_added_back_before_any_run_loses_no_change(ws, request, source_kind, capture):
    """Taken out of `tables:`, `cdc install`, changed, put back, `cdc install`, and only then `cdc run`:
    the checkpoint still streams it, so its capture must never have stopped."""
    source, target = databases(ws, request, source_kind)
    synced_pair(ws, source, target, capture, ["entries", "accounts"])
    write_config(ws, source, target, capture, ["entries"])
    installed = cdc_ok(ws, "install").stdout
    assert "kept " in installed and "accounts" in installed and "its checkpoint still streams it" in installed, \
        installed
    execute(source, "UPDATE accounts SET name = 'Mens den var ute' WHERE id = 1; DELETE FROM accounts WHERE id = 2; "
                    "INSERT INTO accounts VALUES (99, 'Ny konto', 1.50)")
    write_config(ws, source, target, capture, ["entries", "accounts"])
    cdc_ok(ws, "install")
    assert "snapshot" not in cdc_ok(ws, "run", "--once").stdout  # it streams on, as the checkpoint says
    assert same(source, target, "accounts") and same(source, target, "entries")
    assert ws.cdc("status", str(ws.config)).returncode == 0


@pytest.mark.parametrize("source_kind, capture", [("sqlite", "trigger"), ("postgresql", "logical"),
                                                  ("postgresql", "trigger")])
def test_changes_logged_before_a_table_came_back_are_not_applied_over_its_new_copy(ws, request, source_kind, capture):
    """Out of the pair and run, changed while its capture still logged, capture taken down, changed
    again, then added back: the changes logged before are older than the new copy and must not land
    over it (they did: the target kept a stale name and lost a re-inserted row, exit 0, status clean)."""
    source, target = databases(ws, request, source_kind)
    synced_pair(ws, source, target, capture, ["entries", "accounts"])
    write_config(ws, source, target, capture, ["entries"])
    cdc_ok(ws, "run", "--once")
    execute(source, "UPDATE accounts SET name = 'Gammel' WHERE id = 1; DELETE FROM accounts WHERE id = 2")
    cdc_ok(ws, "install")  # takes the capture of accounts down
    execute(source, "UPDATE accounts SET name = 'Ny' WHERE id = 1; INSERT INTO accounts VALUES (2, 'Igjen', 2.00)")
    execute(target, "DROP TABLE accounts")
    write_config(ws, source, target, capture, ["entries", "accounts"])
    for command in ("init", "install"):
        cdc_ok(ws, command)
    assert "snapshot 20 rows" in cdc_ok(ws, "run", "--once").stdout
    assert normalized(target, "SELECT id, name FROM accounts WHERE id <= 2 ORDER BY id") == [(1, "Ny"), (2, "Igjen")]
    assert same(source, target, "accounts") and same(source, target, "entries")
    execute(source, "UPDATE accounts SET name = 'Senere' WHERE id = 1")
    cdc_ok(ws, "run", "--once")
    assert same(source, target, "accounts")
