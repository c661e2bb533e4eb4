"""A checkpoint from another capture installation, or ahead of the source, stops the pair with the fix.

For every capture mode that can be installed again: sync, uninstall, install, change the source;
`cdc run --once` must stop non-zero naming the problem and `cdc run --resnapshot`, `cdc status`
must show it, and `cdc run --once --resnapshot` must make the target equal to the source row by row.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

PRODUCTS = "CREATE TABLE products (sku VARCHAR(20) PRIMARY KEY, name VARCHAR(100) NOT NULL, price NUMERIC(12,2) NOT NULL)"
SEED = [(f"P-{i:02d}", f"Vare {i} æøå", Decimal(i) + Decimal("0.50")) for i in range(1, 21)]


# -- helpers -------------------------------------------------------------------------------
def pexec(url: str, statement: str, params=None) -> list:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def mexec(url: str, statement: str, params=None) -> list:
    parts = sa.engine.make_url(url)
    with pymysql.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password or "",
                         database=parts.database, autocommit=True, charset="utf8mb4") as conn:
        with conn.cursor() as cursor:
            cursor.execute(statement, params)
            return list(cursor.fetchall()) if cursor.description else []


def sqlite_exec(path, statement: str, params=()) -> list:
    conn = sqlite3.connect(path)
    try:
        with conn:
            return conn.execute(statement, params).fetchall()
    finally:
        conn.close()


class Side:
    """One database as the tests use it: run a statement, read a table in key order."""

    def __init__(self, url: str):
        self.url = url

    def execute(self, statement: str, params=None) -> list:
        if self.url.startswith("sqlite"):
            values = tuple(str(v) if isinstance(v, Decimal) else v for v in params or ())
            return sqlite_exec(self.url.removeprefix("sqlite:///"), statement.replace("%s", "?"), values)
        if self.url.startswith("mysql"):
            return mexec(self.url, statement, params)
        return pexec(self.url, statement, params)

    def products(self) -> list[tuple]:
        return [(sku, name, Decimal(str(price)).quantize(Decimal("0.01")))
                for sku, name, price in self.execute("SELECT sku, name, price FROM products ORDER BY sku")]


def write_config(ws, source: str, target: str, capture: str) -> None:
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  gen:\n    source: src\n"
                         f"    target: dst\n    capture: {capture}\n    tables: [products]\n", encoding="utf-8")


def cdc_ok(ws, *args) -> str:
    result = ws.cdc(*args, str(ws.config))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def make_changes(source: Side) -> None:
    """Changes made after capture was installed again: an insert, an update, a delete."""
    source.execute("INSERT INTO products VALUES ('P-99', 'Ny vare', 9.90)")
    source.execute("UPDATE products SET price = 123.45 WHERE sku = 'P-02'")
    source.execute("DELETE FROM products WHERE sku = 'P-03'")


def assert_reinstall_stops_then_resnapshot_repairs(ws, source: Side, target: Side, between=None,
                                                   expect: str = "capture was uninstalled and installed again?"
                                                   ) -> None:
    """Sync; uninstall + install (plus ``between``); change; the run stops loudly; --resnapshot repairs."""
    for sku, name, price in SEED:
        source.execute("INSERT INTO products VALUES (%s, %s, %s)", (sku, name, price))
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    source.execute("UPDATE products SET name = 'Endret' WHERE sku = 'P-01'")
    cdc_ok(ws, "run", "--once")
    assert target.products() == source.products()

    cdc_ok(ws, "uninstall")
    source.execute("UPDATE products SET price = 777.77 WHERE sku = 'P-04'")  # while nothing captures
    cdc_ok(ws, "install")
    if between is not None:
        between()
    make_changes(source)
    before = ws.cdc("status", str(ws.config))  # before any run has failed on it
    assert before.returncode == 1 and "problem" in before.stdout and "--resnapshot" in before.stdout, before.stdout

    stopped = ws.cdc("run", "--once", str(ws.config))
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert "pair gen" in stopped.stderr and "cdc run --resnapshot" in stopped.stderr, stopped.stderr
    assert expect in stopped.stderr, stopped.stderr
    assert target.products() != source.products()

    status = ws.cdc("status", "--json", str(ws.config))
    row = json.loads(status.stdout)[0]
    assert status.returncode == 1 and not row["healthy"] and row["pending"] is None, row
    assert "pair gen" in row["error"] and expect in row["error"] and "--resnapshot" in row["error"], row
    text = ws.cdc("status", str(ws.config)).stdout
    assert "failed: " in text and "--resnapshot" in text, text

    cdc_ok(ws, "run", "--once", "--resnapshot")
    # The copy brings every row the source has; the row deleted meanwhile is what the message's
    # second step, reconcile --repair, removes.
    assert target.products() == sorted(source.products() + [("P-03", "Vare 3 æøå", Decimal("3.50"))])
    assert "cdc reconcile CONFIG --repair" in stopped.stderr
    ws.cdc("reconcile", str(ws.config), "--repair", "--settle", "0")
    assert target.products() == source.products()
    # And it streams again from the new installation.
    source.execute("UPDATE products SET price = 1.00 WHERE sku = 'P-05'")
    cdc_ok(ws, "run", "--once")
    assert target.products() == source.products()
    healthy = ws.cdc("status", "--json", str(ws.config))
    assert healthy.returncode == 0 and json.loads(healthy.stdout)[0]["error"] is None, healthy.stdout


# -- SQLite --------------------------------------------------------------------------------
@pytest.fixture
def sqlite_pair(ws):
    ws.sql(ws.source, PRODUCTS)
    write_config(ws, "sqlite:///source.db", "sqlite:///target.db", "trigger")
    return Side(f"sqlite:///{ws.source}"), Side(f"sqlite:///{ws.target}")


def test_sqlite_trigger_reinstalled(ws, sqlite_pair):
    source, target = sqlite_pair
    assert_reinstall_stops_then_resnapshot_repairs(ws, source, target)


def test_sqlite_trigger_reinstalled_and_busier_than_before(ws, sqlite_pair):
    """The new changelog has handed out more ids than the checkpoint: only the generation tells."""
    source, target = sqlite_pair

    def busy() -> None:
        for i in range(40):
            source.execute("UPDATE products SET name = %s WHERE sku = 'P-06'", (f"runde {i}",))

    assert_reinstall_stops_then_resnapshot_repairs(ws, source, target, between=busy)


def test_sqlite_checkpoint_edited_past_the_changelog(ws, sqlite_pair):
    source, target = synced_products(ws, sqlite_pair, 3)
    target.execute("UPDATE cdc_checkpoints SET position = '5000'")
    source.execute("UPDATE products SET price = 5.55 WHERE sku = 'P-01'")
    stopped = ws.cdc("run", "--once", str(ws.config))
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr
    assert "5000" in stopped.stderr and "cdc run --resnapshot" in stopped.stderr, stopped.stderr
    cdc_ok(ws, "run", "--once", "--resnapshot")
    assert target.products() == source.products()


def test_old_checkpoint_adopts_the_generation(ws, sqlite_pair):
    """A checkpoint written before generations existed (NULL) adopts the installation it runs on."""
    source, target = sqlite_pair
    source.execute("INSERT INTO products VALUES ('P-01', 'a', 1.00)")
    for command in ("init", "install", "run"):
        cdc_ok(ws, command, *(["--once"] if command == "run" else []))
    generation = target.execute("SELECT generation FROM cdc_checkpoints")[0][0]
    assert generation and generation == source.execute("SELECT generation FROM _cdc_consumers")[0][0]
    target.execute("UPDATE cdc_checkpoints SET generation = NULL")
    source.execute("UPDATE products SET price = 2.00")
    cdc_ok(ws, "run", "--once")
    assert target.execute("SELECT generation FROM cdc_checkpoints")[0][0] == generation
    assert target.products() == source.products()
    cdc_ok(ws, "install")  # installing again keeps the installation's identity
    assert source.execute("SELECT generation FROM _cdc_consumers")[0][0] == generation
    cdc_ok(ws, "run", "--once")


# -- PostgreSQL ----------------------------------------------------------------------------
@pytest.fixture
def pg_pair(ws, pg_databases):
    def make(capture: str) -> tuple[Side, Side]:
        source, target = pg_databases(), pg_databases()
        pexec(source, PRODUCTS)
        write_config(ws, source, target, capture)
        return Side(source), Side(target)

    return make


@pytest.mark.parametrize("capture", ["trigger", "logical"])
def test_postgresql_reinstalled(ws, pg_pair, capture):
    source, target = pg_pair(capture)
    assert_reinstall_stops_then_resnapshot_repairs(ws, source, target)


def test_postgresql_logical_slot_dropped_and_installed_again(ws, pg_pair):
    """A slot dropped behind cdc-sync's back and made again by `cdc install`: a new incarnation."""
    source, target = pg_pair("logical")

    def drop_slot_and_install() -> None:
        source.execute("UPDATE products SET price = 2.22 WHERE sku = 'P-07'")
        source.execute("SELECT pg_drop_replication_slot('cdc_gen')")
        source.execute("UPDATE products SET price = 3.33 WHERE sku = 'P-08'")  # in no slot
        cdc_ok(ws, "install")

    assert_reinstall_stops_then_resnapshot_repairs(ws, source, target, between=drop_slot_and_install)


@pytest.mark.parametrize("capture", ["trigger", "logical"])
def test_postgresql_checkpoint_ahead_of_the_source(ws, pg_pair, capture):
    source, target = pg_pair(capture)
    source.execute("INSERT INTO products VALUES ('P-01', 'a', 1.00)")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    target.execute("UPDATE cdc_checkpoints SET position = '999999999999'")
    source.execute("UPDATE products SET price = 2.00")
    stopped = ws.cdc("run", "--once", str(ws.config))
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr
    assert "is ahead of" in stopped.stderr and "cdc run --resnapshot" in stopped.stderr, stopped.stderr
    assert "failed: " in ws.cdc("status", str(ws.config)).stdout
    cdc_ok(ws, "run", "--once", "--resnapshot")
    assert target.products() == source.products()


# -- MySQL/MariaDB -------------------------------------------------------------------------
MYSQL_PRODUCTS = PRODUCTS.replace("NUMERIC", "DECIMAL") + " ENGINE=InnoDB"


def test_mariadb_trigger_reinstalled(ws, mysql_url, pg_url):
    mexec(mysql_url, MYSQL_PRODUCTS)
    write_config(ws, mysql_url, pg_url, "trigger")
    assert_reinstall_stops_then_resnapshot_repairs(ws, Side(mysql_url), Side(pg_url))


@pytest.fixture
def own_mariadb():
    """A MariaDB server of this test's own: RESET MASTER must not disturb other tests' binlogs."""
    from mysqlserver import LocalMariaDB

    try:
        server = LocalMariaDB()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"no MariaDB server: {exc}")
    try:
        mexec(server.url(), "CREATE DATABASE shop")
        yield server.url("shop")
    finally:
        server.remove()


@pytest.mark.parametrize("writes_after_reset", [0, 60])
def test_mariadb_binlog_reset_master(ws, own_mariadb, pg_url, writes_after_reset):
    """RESET MASTER empties the binlog and starts it again: the checkpoint is then past its end, or
    (once as much has been written again) inside it, at a place no longer where its transaction ended."""
    source = Side(own_mariadb)
    mexec(own_mariadb, MYSQL_PRODUCTS)
    write_config(ws, own_mariadb, pg_url, "binlog")

    def reset_master() -> None:
        checkpoint = json.loads(Side(pg_url).execute("SELECT position FROM cdc_checkpoints")[0][0])
        mexec(own_mariadb, "RESET MASTER")
        for i in range(writes_after_reset):
            source.execute("UPDATE products SET name = %s WHERE sku = 'P-06'", (f"runde {i}",))
        if writes_after_reset:
            assert mexec(own_mariadb, "SHOW MASTER STATUS")[0][1] > checkpoint["pos"]

    expect = "not where it was in the server's binlog" if writes_after_reset else "is ahead of the end of the server's binlog"
    assert_reinstall_stops_then_resnapshot_repairs(ws, source, Side(pg_url), between=reset_master, expect=expect)


def test_mariadb_binlog_generation_is_the_server(ws, own_mariadb, pg_url):
    source = Side(own_mariadb)
    mexec(own_mariadb, MYSQL_PRODUCTS)
    source.execute("INSERT INTO products VALUES ('P-01', 'a', 1.00)")
    write_config(ws, own_mariadb, pg_url, "binlog")
    for command in ("init", "install", "run"):
        cdc_ok(ws, command, *(["--once"] if command == "run" else []))
    assert Side(pg_url).execute("SELECT generation FROM cdc_checkpoints") == [("server_id 1",)]
    # The same binlog files and positions on another server (a replica promoted in its place).
    Side(pg_url).execute("UPDATE cdc_checkpoints SET generation = 'server_id 2'")
    stopped = ws.cdc("run", "--once", str(ws.config))
    assert stopped.returncode == 1 and "capture installation server_id 2" in stopped.stderr, stopped.stderr


# -- A checkpoint behind what the source has released (a target restored from a backup) ----
def sqlite_backup(path):
    """Copy the SQLite file now; the returned function puts that copy back in one step (a copy
    written over the live file in place can be read half-written by a running pair, which then
    stops on a table without capture instead of on the restore)."""
    saved = path.read_bytes()

    def restore():
        staged = path.with_name(path.name + ".restore")
        staged.write_bytes(saved)
        os.replace(staged, path)

    return restore


def pg_backup(ws, url: str):
    """pg_dump the PostgreSQL target now; the returned function restores that dump over it."""
    import subprocess

    dump = ws.root / "ledger.dump"
    subprocess.run(["pg_dump", "--format=custom", f"--file={dump}", url], check=True, capture_output=True)
    return lambda: subprocess.run(["pg_restore", "--clean", "--if-exists", "--single-transaction", f"--dbname={url}",
                                   str(dump)], check=True, capture_output=True)


def sync_then_restore_the_target(ws, source: Side, target: Side, backup, *args: str) -> tuple[list, object]:
    """Sync, back the target up, change the source and sync that change, put the backup back,
    change the source again (``args``: for `cdc run`). Returns (the target's rows in the backup,
    the restore function)."""
    for sku, name, price in SEED[:5]:
        source.execute("INSERT INTO products VALUES (%s, %s, %s)", (sku, name, price))
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once", *args)
    backed_up, restore = target.products(), backup()
    source.execute("UPDATE products SET price = 10.10 WHERE sku = 'P-01'")  # applied, acknowledged, released
    cdc_ok(ws, "run", "--once", *args)
    assert target.products() == source.products()
    restore()
    assert target.products() == backed_up
    source.execute("UPDATE products SET price = 20.20 WHERE sku = 'P-02'")
    return backed_up, restore


def assert_restored_target_stops_then_resnapshot_repairs(ws, source: Side, target: Side, backup) -> None:
    """Without the stop, P-01's change, released by the source after the backup, is lost for good
    while `cdc run` says all is well."""
    backed_up, _ = sync_then_restore_the_target(ws, source, target, backup)
    stopped = ws.cdc("run", "--once", str(ws.config))
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stdout + stopped.stderr
    message = [line for line in stopped.stderr.splitlines() if "is behind" in line]
    assert len(message) == 1, stopped.stderr
    assert "pair gen" in message[0] and "cdc run --resnapshot CONFIG" in message[0], message
    assert "restored from an older backup" in message[0], message
    assert target.products() == backed_up  # nothing applied
    status = ws.cdc("status", "--json", str(ws.config))
    row = json.loads(status.stdout)[0]
    assert status.returncode == 1 and "is behind" in row["error"] and "--resnapshot" in row["error"], row
    cdc_ok(ws, "run", "--once", "--resnapshot")
    assert target.products() == source.products()
    source.execute("UPDATE products SET price = 30.30 WHERE sku = 'P-03'")
    cdc_ok(ws, "run", "--once")
    assert target.products() == source.products()
    assert ws.cdc("status", str(ws.config)).returncode == 0


def test_sqlite_target_restored_from_a_backup(ws, sqlite_pair):
    source, target = sqlite_pair
    assert_restored_target_stops_then_resnapshot_repairs(ws, source, target, lambda: sqlite_backup(ws.target))


def test_sqlite_restored_target_whose_changes_the_changelog_still_holds(ws, sqlite_pair):
    """Another pair on the same changelog has not acknowledged them: nothing was purged, so the
    restored target gets the changes again from the changelog, once each, and no stop."""
    source, target = sqlite_pair
    pair = "    source: src\n    target: {}\n    capture: trigger\n    tables: [products]\n"
    ws.config.write_text("connections:\n  src: sqlite:///source.db\n  dst: sqlite:///target.db\n"
                         "  dst2: sqlite:///other.db\npairs:\n  gen:\n" + pair.format("dst") + "  other:\n"
                         + pair.format("dst2"), encoding="utf-8")
    sync_then_restore_the_target(ws, source, target, lambda: sqlite_backup(ws.target), "--pair", "gen")
    assert source.execute("SELECT pair, acked_id FROM _cdc_consumers WHERE pair = 'other'") == [("other", 0)]
    cdc_ok(ws, "run", "--once", "--pair", "gen")
    assert target.products() == source.products()
    audited = target.execute("SELECT key FROM cdc_audit_log WHERE op = 'update' ORDER BY id")
    assert audited == [('["P-01"]',), ('["P-02"]',)]  # P-01's change again (its audit row was in the lost copy)


def test_sqlite_another_target_ran_the_pair_meanwhile(ws, sqlite_pair):
    """The demo trap: the config pointed at a new, empty ledger for a while (LEDGER_URL not set), and
    `cdc init` + `cdc run` there acknowledged the pair's changes, so the changelog purged them; the
    real ledger's next run must stop, not skip them."""
    source, target = synced_products(ws, sqlite_pair, 3)
    real = ws.config.read_text()
    source.execute("UPDATE products SET price = 11.11 WHERE sku = 'P-01'")  # the real ledger has not read it
    ws.config.write_text(real.replace("target.db", "stray.db"), encoding="utf-8")
    cdc_ok(ws, "init")
    cdc_ok(ws, "run", "--once")
    source.execute("UPDATE products SET price = 22.22 WHERE sku = 'P-02'")
    cdc_ok(ws, "run", "--once")  # applied to stray.db, acknowledged: the changelog purges P-01's change too
    ws.config.write_text(real, encoding="utf-8")
    before = target.products()
    stopped = ws.cdc("run", "--once", str(ws.config))
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stdout + stopped.stderr
    assert "is behind" in stopped.stderr and "another target ran this pair" in stopped.stderr, stopped.stderr
    assert target.products() == before
    cdc_ok(ws, "run", "--once", "--resnapshot")
    assert target.products() == source.products()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_trigger_checkpoint_ahead_of_the_acknowledgement_runs_on(ws, kind, request):
    """Killed after the target committed but before the source was acknowledged: the checkpoint is
    ahead of the consumer's acknowledged position; the next run acknowledges and goes on."""
    if kind == "sqlite":
        ws.sql(ws.source, PRODUCTS)
        source_url, target_url, acked = f"sqlite:///{ws.source}", f"sqlite:///{ws.target}", "acked_id"
    elif kind == "postgresql":
        make = request.getfixturevalue("pg_databases")
        source_url, target_url, acked = make(), make(), "acked"
        pexec(source_url, PRODUCTS)
    else:
        source_url, target_url, acked = request.getfixturevalue("mysql_url"), request.getfixturevalue("pg_url"), "acked"
        mexec(source_url, MYSQL_PRODUCTS)
    write_config(ws, source_url, target_url, "trigger")
    source, target = Side(source_url), Side(target_url)
    source.execute("INSERT INTO products VALUES ('P-01', 'a', 1.00)")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    for price in ("2.00", "3.00"):
        source.execute("UPDATE products SET price = %s", (price,))
    cdc_ok(ws, "run", "--once")
    source.execute(f"UPDATE _cdc_consumers SET {acked} = 0")  # as if the acknowledge never ran
    assert ws.cdc("status", str(ws.config)).returncode == 0
    source.execute("UPDATE products SET price = 4.00")
    cdc_ok(ws, "run", "--once")
    assert target.products() == source.products()
    position = json.loads(target.execute("SELECT position FROM cdc_checkpoints")[0][0])
    if isinstance(position, str):  # PostgreSQL: a transaction snapshot, all below its xmin applied
        position = int(position.split(":")[0])
    assert source.execute(f"SELECT {acked} FROM _cdc_consumers") == [(position,)]


@pytest.mark.parametrize("capture", ["trigger", "logical"])
def test_postgresql_target_restored_from_a_pg_dump(ws, pg_pair, capture):
    source, target = pg_pair(capture)
    assert_restored_target_stops_then_resnapshot_repairs(ws, source, target, lambda: pg_backup(ws, target.url))


def test_mariadb_trigger_target_restored_from_a_pg_dump(ws, mysql_url, pg_url):
    mexec(mysql_url, MYSQL_PRODUCTS)
    write_config(ws, mysql_url, pg_url, "trigger")
    assert_restored_target_stops_then_resnapshot_repairs(ws, Side(mysql_url), Side(pg_url),
                                                         lambda: pg_backup(ws, pg_url))


def test_mariadb_binlog_target_restored_from_a_pg_dump_reads_the_binlog_again(ws, mysql_url, pg_url):
    """The binlog still holds what came after the backup's checkpoint: no stop, nothing lost."""
    mexec(mysql_url, MYSQL_PRODUCTS)
    write_config(ws, mysql_url, pg_url, "binlog")
    source, target = Side(mysql_url), Side(pg_url)
    sync_then_restore_the_target(ws, source, target, lambda: pg_backup(ws, pg_url))
    cdc_ok(ws, "run", "--once")
    assert target.products() == source.products()
    assert ws.cdc("status", str(ws.config)).returncode == 0


def test_postgresql_logical_idle_heartbeat_moves_the_checkpoint_first(ws, pg_pair):
    """An idle pair releases the WAL other work writes (the slot's heartbeat); the checkpoint moves
    with it, so the slot is never confirmed past the checkpoint and a restart runs on."""
    source, target = pg_pair("logical")
    source.execute("CREATE TABLE other (n int)")
    source.execute("INSERT INTO products VALUES ('P-01', 'a', 1.00)")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    for _ in range(3):
        source.execute("INSERT INTO other SELECT generate_series(1, 2000)")  # WAL, none of it the pair's
        cdc_ok(ws, "run", "--once")
        checkpoint = int(target.execute("SELECT position FROM cdc_checkpoints")[0][0])
        confirmed = source.execute("SELECT confirmed_flush_lsn - '0/0'::pg_lsn FROM pg_replication_slots "
                                   "WHERE slot_name = 'cdc_gen'")[0][0]
        assert confirmed <= checkpoint
    assert source.execute("SELECT pg_current_wal_flush_lsn() - confirmed_flush_lsn FROM pg_replication_slots "
                          "WHERE slot_name = 'cdc_gen'")[0][0] < 100_000  # the WAL was released
    source.execute("UPDATE products SET price = 2.00")
    cdc_ok(ws, "run", "--once")
    assert target.products() == source.products()


@pytest.mark.parametrize("big_at", ["last", "before_last"])
def test_mariadb_binlog_event_larger_than_max_allowed_packet_is_no_reset(ws, own_mariadb, pg_url, big_at):
    """BINLOG_GTID_POS gives NULL past an event larger than max_allowed_packet (a 20 MB row image
    with a 16 MB limit): the GTID state there is unknown, not a RESET MASTER; the pair runs on."""
    mexec(own_mariadb, "CREATE TABLE documents (id INT PRIMARY KEY, body LONGTEXT NOT NULL) ENGINE=InnoDB")
    mexec(own_mariadb, "INSERT INTO documents VALUES (1, 'kort'), (2, 'kort')")
    ws.config.write_text(f"connections:\n  src: {own_mariadb}\n  dst: {pg_url}\npairs:\n  gen:\n    source: src\n"
                         "    target: dst\n    capture: binlog\n    tables: [documents]\n", encoding="utf-8")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    limit = mexec(own_mariadb, "SELECT @@max_allowed_packet")[0][0]
    mexec(own_mariadb, f"UPDATE documents SET body = REPEAT('x', {limit * 5 // 8}) WHERE id = 1")
    mexec(own_mariadb, f"UPDATE documents SET body = REPEAT('y', {limit * 5 // 8}) WHERE id = 1")  # 2 x 10 MB image
    if big_at == "before_last":
        mexec(own_mariadb, "UPDATE documents SET body = 'etter' WHERE id = 2")
    cdc_ok(ws, "run", "--once")
    checkpoint = json.loads(Side(pg_url).execute("SELECT position FROM cdc_checkpoints")[0][0])
    assert mexec(own_mariadb, "SELECT BINLOG_GTID_POS(%s, %s)", (checkpoint["file"], checkpoint["pos"])) == [(None,)]
    mexec(own_mariadb, "UPDATE documents SET body = 'siste' WHERE id = 2")
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 0 and "RESET MASTER" not in result.stderr, result.stderr
    status = ws.cdc("status", str(ws.config))
    assert status.returncode == 0 and "RESET MASTER" not in status.stdout, status.stdout
    bodies = Side(pg_url).execute("SELECT id, md5(body) FROM documents ORDER BY id")
    assert bodies == [tuple(r) for r in mexec(own_mariadb, "SELECT id, md5(body) FROM documents ORDER BY id")]


def test_status_of_a_streaming_pair_never_reports_it_behind(ws, sqlite_pair):
    """`cdc status` reads the checkpoint, then the source: a running pair that commits and
    acknowledges in between makes the source look past the checkpoint it read. That is no loss
    (the checkpoint moved on), and status must not say so."""
    import signal
    import subprocess
    import sys
    import threading
    import time

    source, target = sqlite_pair
    ws.config.write_text(ws.config.read_text() + "    poll_interval: 0.02\n    batch_size: 5\n", encoding="utf-8")
    for sku, name, price in SEED:
        source.execute("INSERT INTO products VALUES (%s, %s, %s)", (sku, name, price))
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    done = threading.Event()

    def write() -> None:
        n = 0
        while not done.is_set():
            n += 1
            source.execute("UPDATE products SET price = %s WHERE sku = %s", (Decimal(n), SEED[n % 20][0]))
            time.sleep(0.003)

    runner = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    writer = threading.Thread(target=write)
    writer.start()
    try:
        errors = []
        for _ in range(12):
            row = json.loads(ws.cdc("status", "--json", str(ws.config)).stdout)[0]
            errors.append(row["error"])
    finally:
        done.set()
        writer.join()
        time.sleep(1)
        runner.send_signal(signal.SIGTERM)
        _, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, err
    assert [e for e in errors if e] == [], errors
    cdc_ok(ws, "run", "--once")
    assert target.products() == source.products()


# -- the SQLite changelog changed behind the pair's back -------------------------------------------
def synced_products(ws, sqlite_pair, count: int = 5) -> tuple[Side, Side]:
    """The first ``count`` products, copied by a first run."""
    source, target = sqlite_pair
    for sku, name, price in SEED[:count]:
        source.execute("INSERT INTO products VALUES (%s, %s, %s)", (sku, name, price))
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    return source, target


def assert_stops_then_resnapshot_repairs(ws, source: Side, target: Side, expect: str) -> None:
    status = ws.cdc("status", str(ws.config))
    assert status.returncode == 1 and expect in status.stdout, status.stdout
    before = target.products()
    stopped = ws.cdc("run", "--once", str(ws.config))
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stdout + stopped.stderr
    assert expect in stopped.stderr and "cdc run --resnapshot" in stopped.stderr, stopped.stderr
    assert target.products() == before, "the run applied changes past the damage"
    cdc_ok(ws, "run", "--once", "--resnapshot")
    assert target.products() == source.products()
    assert ws.cdc("status", str(ws.config)).returncode == 0


def test_sqlite_changelog_rows_deleted_by_hand_stop_the_pair(ws, sqlite_pair):
    source, target = synced_products(ws, sqlite_pair)
    for sku, price in (("P-01", "1.11"), ("P-02", "2.22"), ("P-03", "3.33")):
        source.execute("UPDATE products SET price = %s WHERE sku = %s", (price, sku))
    source.execute("DELETE FROM _cdc_changelog WHERE id = (SELECT min(id) + 1 FROM _cdc_changelog)")  # P-02's
    assert_stops_then_resnapshot_repairs(ws, source, target, "1 of the changelog rows 1..3 are missing from "
                                                             "_cdc_changelog (deleted by hand?)")


def test_sqlite_changelog_rows_deleted_under_a_running_pair_stop_it_at_its_next_read(ws, sqlite_pair):
    source, target = synced_products(ws, sqlite_pair)
    ws.config.write_text(ws.config.read_text() + "    poll_interval: 2\n", encoding="utf-8")
    run = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        source.execute("UPDATE products SET price = 0.01 WHERE sku = 'P-05'")
        deadline = time.monotonic() + 60
        while dict((sku, price) for sku, _, price in target.products())["P-05"] != Decimal("0.01"):
            assert time.monotonic() < deadline and run.poll() is None, "the run did not stream"
            time.sleep(0.05)
        # Between two reads (the run sleeps poll_interval when idle), in one transaction: two changes,
        # the first one's changelog row deleted by hand.
        ws.sql(ws.source, "BEGIN; UPDATE products SET price = 1.11 WHERE sku = 'P-01'; DELETE FROM _cdc_changelog; "
                          "UPDATE products SET price = 3.33 WHERE sku = 'P-03'; COMMIT;")
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1 and "1 of the changelog rows 2..3 are missing" in stderr, stderr
    assert dict((sku, price) for sku, _, price in target.products())["P-03"] == Decimal("3.50")


def test_sqlite_source_restored_from_an_older_copy_stops_the_pair(ws, sqlite_pair):
    """The ERP's database is put back from last night's copy and used at once: its changelog hands
    out again the ids the pair has applied, so the checkpoint would pass over the new changes."""
    source, target = synced_products(ws, sqlite_pair)
    restore = sqlite_backup(ws.source)
    for sku, price in (("P-01", "1.11"), ("P-02", "2.22"), ("P-03", "3.33")):
        source.execute("UPDATE products SET price = %s WHERE sku = %s", (price, sku))
    cdc_ok(ws, "run", "--once")  # checkpoint 8; the copy's changelog ends at 5
    restore()
    time.sleep(6)  # the restore and the new work come later than the checkpoint (see RESTORE_SLACK)
    for sku, price in (("P-04", "4.44"), ("P-05", "5.55"), ("P-01", "9.99"), ("P-02", "8.88")):
        source.execute("UPDATE products SET price = %s WHERE sku = %s", (price, sku))
    assert_stops_then_resnapshot_repairs(ws, source, target, "the source database was restored from an older copy")


def test_a_pair_switched_from_timestamp_to_trigger_capture_stops_with_the_fix(ws):
    """The checkpoint holds timestamp watermarks, which trigger capture cannot read: one line, no traceback."""
    ws.sql(ws.source, PRODUCTS)
    ws.sql(ws.source, "ALTER TABLE products ADD COLUMN changed TEXT; "
                      "INSERT INTO products VALUES ('P-01', 'a', 1.00, '2026-01-01 00:00:00')")
    ws.config.write_text("connections:\n  src: sqlite:///source.db\n  dst: sqlite:///target.db\npairs:\n  gen:\n"
                         "    source: src\n    target: dst\n    capture: timestamp\n    timestamp: {column: changed}\n"
                         "    tables: [products]\n", encoding="utf-8")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    ws.config.write_text(ws.config.read_text().replace("capture: timestamp", "capture: trigger")
                         .replace("    timestamp: {column: changed}\n", ""), encoding="utf-8")
    cdc_ok(ws, "install")
    for command in (("run", "--once"), ("status",)):
        result = ws.cdc(*command, str(ws.config))
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
        assert "is not a position the pair's capture mode reads" in result.stdout + result.stderr
    cdc_ok(ws, "run", "--once", "--resnapshot")
    assert ws.cdc("status", str(ws.config)).returncode == 0


def start_streaming(ws) -> subprocess.Popen:
    """`cdc run` as a service (poll_interval 0.2 s), once it has applied a change."""
    ws.config.write_text(ws.config.read_text() + "    poll_interval: 0.2\n", encoding="utf-8")
    run = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sqlite_exec(ws.source, "UPDATE products SET price = 0.01 WHERE sku = 'P-05'")
    deadline = time.monotonic() + 60
    while dict((sku, price) for sku, _, price in Side(f"sqlite:///{ws.target}").products())["P-05"] != Decimal("0.01"):
        assert time.monotonic() < deadline and run.poll() is None, "the run did not stream"
        time.sleep(0.05)
    return run


@pytest.mark.parametrize("what", ["restored from an older copy", "installed again", "removed"])
def test_sqlite_source_changed_under_a_running_pair_stops_it(ws, sqlite_pair, what):
    """The service itself stops at its next read (exit 1), instead of skipping the changes under reused
    ids, streaming from another installation, or reading on from a file no longer at its path (its
    pooled connection still had the old file open)."""
    source, target = synced_products(ws, sqlite_pair)
    restore = sqlite_backup(ws.source)
    run = start_streaming(ws)
    try:
        for sku, price in (("P-01", "1.11"), ("P-02", "2.22")):
            source.execute("UPDATE products SET price = %s WHERE sku = %s", (price, sku))
        if what == "installed again":
            cdc_ok(ws, "uninstall")
            cdc_ok(ws, "install")
        elif what == "removed":
            time.sleep(1)
            ws.source.rename(ws.source.with_name("moved-away.db"))
        else:
            time.sleep(1)  # applied by the service
            restore()
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1, stderr
    if what == "installed again":  # read between the two commands: capture not installed, which stops it too
        assert "capture was installed again while the pair ran" in stderr and "cdc run --resnapshot" in stderr \
            or "capture is not installed for pair gen" in stderr, stderr
    elif what == "removed":
        assert f"database file {ws.source} was removed while cdc-sync had it open" in stderr, stderr
    else:
        assert "the newest changelog id the source has issued (the database was restored from an older copy?)" \
            in stderr and "cdc run --resnapshot" in stderr, stderr
    assert "Traceback" not in stderr
    if what != "removed":
        assert ws.cdc("status", str(ws.config)).returncode == 1


def test_postgresql_trigger_source_restored_from_a_dump_stops_the_pair(ws, pg_databases):
    """pg_restore into the source database made anew: it went back to the dump, which the target has
    passed, and its changelog has none of what came after."""
    import subprocess

    source_url, target_url = pg_databases(), pg_databases()
    pexec(source_url, PRODUCTS)
    write_config(ws, source_url, target_url, "trigger")
    source, target = Side(source_url), Side(target_url)
    for sku, name, price in SEED[:5]:
        source.execute("INSERT INTO products VALUES (%s, %s, %s)", (sku, name, price))
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    dump = ws.root / "source.dump"
    subprocess.run(["pg_dump", "--format=custom", f"--file={dump}", source_url], check=True, capture_output=True)
    source.execute("INSERT INTO products VALUES ('P-99', 'Etter dumpen', 9.90)")
    source.execute("DELETE FROM products WHERE sku = 'P-01'")
    cdc_ok(ws, "run", "--once")
    name = sa.engine.make_url(source_url).database
    admin = sa.engine.make_url(source_url).set(database="postgres").render_as_string(hide_password=False)
    pexec(admin, f'DROP DATABASE "{name}" WITH (FORCE)')
    pexec(admin, f'CREATE DATABASE "{name}"')
    subprocess.run(["pg_restore", f"--dbname={source_url}", str(dump)], check=True, capture_output=True)
    source.execute("UPDATE products SET price = 3.33 WHERE sku = 'P-03'")
    expected = "the source database is not the one capture was installed in"
    status = ws.cdc("status", str(ws.config))
    assert status.returncode == 1 and expected in status.stdout, status.stdout
    stopped = ws.cdc("run", "--once", str(ws.config))
    assert stopped.returncode == 1 and expected in stopped.stderr and "--resnapshot" in stopped.stderr, stopped.stderr
    cdc_ok(ws, "run", "--once", "--resnapshot")
    ws.cdc("reconcile", str(ws.config), "--repair", "--settle", "0")
    assert target.products() == source.products()
    assert ws.cdc("status", str(ws.config)).returncode == 0
