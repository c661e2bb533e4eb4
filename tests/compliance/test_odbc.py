"""The ODBC adapter's two checks a new user makes (issue: ODBC adapter), on real servers through the
Debian ODBC drivers: a PostgreSQL source read through psqlODBC under 5,000 random changes and SIGKILLs,
and a MariaDB target written through MariaDB Connector/ODBC with exact decimals and Unicode."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from decimal import Decimal

import psycopg
import pymysql
import pytest
import sqlalchemy as sa

from compliance.cases import POLLING, Source
from compliance.test_guarantees import kill_while_streaming, landed

CHANGES = 5000


def _write_changes(pair, rng: random.Random, log: list[tuple[int, str]]) -> None:
    """CHANGES random inserts, updates and soft deletes in transactions of 1-4 changes on one connection,
    each change's note unique (c<n>), so every row version can be told apart; ``log``: (key, note)."""
    live = [row[0] for row in pair.source.live_rows()]
    with psycopg.connect(pair.source.native_url) as conn:
        while len(log) < CHANGES:
            touched: set[int] = set()
            with conn.transaction():
                for _ in range(rng.randint(1, 4)):
                    note = f"c{len(log)} æøå ☕"
                    roll = rng.random()
                    if roll < 0.4 or len(live) < 5:
                        key, pair.next_id = pair.next_id, pair.next_id + 1
                        conn.execute("INSERT INTO items (id, amount, note, updated_at, deleted) "
                                     "VALUES (%s, %s, %s, clock_timestamp(), false)",
                                     (key, Decimal(rng.randint(-10**12, 10**12)) / 100, note))
                        live.append(key)
                    else:
                        key = rng.choice(live)
                        if key in touched:
                            continue
                        deleted = roll > 0.9
                        conn.execute("UPDATE items SET amount = %s, note = %s, deleted = %s, "
                                     "updated_at = clock_timestamp() WHERE id = %s",
                                     (Decimal(rng.randint(-10**12, 10**12)) / 100, note, deleted, key))
                        if deleted:
                            live.remove(key)
                    touched.add(key)
                    log.append((key, note))
            time.sleep(rng.random() * 0.01)  # an application's pace: polls see most versions one by one


def test_an_odbc_postgresql_source_survives_5000_random_changes_and_sigkills(make_pair):
    case = Source("odbc-postgresql", "timestamp", **POLLING)
    pair = make_pair(case, "postgresql")
    pair.source.transaction(pair.insert_many([pair.plain_row(f"rad {i}") for i in range(50)]))
    pair.setup(batch_size=100, poll_interval=0.02)
    pair.ok("run", "--once")
    log: list[tuple[int, str]] = []
    writer = threading.Thread(target=_write_changes, args=(pair, random.Random(15), log))
    writer.start()
    at_kills: list[int] = []
    kill_while_streaming(pair, writer.is_alive, random.Random(16), at_kills, kills=20)
    writer.join()
    pair.ok("run", "--once")
    assert len(log) >= CHANGES and landed(at_kills) >= 20, f"kills while applying: {at_kills}"
    pair.assert_target_equals_source()
    # Polling sees row versions: each audited once, each one the source wrote, the last of every row applied.
    audited = [(json.loads(key)[0], json.loads(after or before)["note"]) for key, before, after in pair.target.execute(
        'SELECT "key", before, "after" FROM cdc_audit_log WHERE op <> \'snapshot\' ORDER BY id')]
    doubled = [version for version, n in Counter(audited).items() if n > 1]
    assert not doubled, f"row versions applied twice: {doubled[:5]}"
    assert set(audited) <= set(log), "an audited version the source never wrote"
    last = {key: note for key, note in log}
    assert {(k, n) for k, n in last.items()} <= set(audited), "the last version of a row was not applied"
    print(f"\n{len(log)} source changes, {len(audited)} row versions applied, {len(at_kills)} SIGKILLs "
          f"({landed(at_kills)} while applying)")


def test_an_odbc_mariadb_target_gets_a_sqlite_sources_exact_decimals_and_unicode(make_pair):
    case = Source("sqlite", "trigger")
    pair = make_pair(case, "odbc-mysql")
    amounts = ["12345678901234567890.0123456789", "-0.0000000001", "0", "99999999999999999999.9999999999"]
    notes = ["Blåbærsyltetøy æøå ÆØÅ", "Kaffe ☕ og 😀 (fire byte)", "𝄞 ǅ ﬁ ß İ", "ø" * 30000 + "☕"]  # 60,003 bytes: TEXT holds 65,535
    pair.source.transaction([pair.insert((i + 1, a, None, None, n, b"\x00\xff", True))
                             for i, (a, n) in enumerate(zip(amounts, notes))])
    pair.setup()
    pair.ok("run", "--once")  # the snapshot
    pair.source.transaction([pair.update(1, "-12345678901234567890.0123456789", "Ærlig talt, 😀"),
                             pair.insert((5, "0.0000000001", None, None, "Ny rad ☕", None, False))])
    pair.ok("run", "--once")  # the stream
    pair.assert_target_equals_source()
    target = {row[0]: (row[1], row[4]) for row in pair.target.rows()}
    assert target[1] == (Decimal("-12345678901234567890.0123456789"), "Ærlig talt, 😀")
    assert target[2] == (Decimal("-1E-10"), notes[1]) and target[4][1] == notes[3]
    assert target[5] == (Decimal("1E-10"), "Ny rad ☕")
    assert pair.target.execute("SELECT CAST(amount AS CHAR) FROM items WHERE id = 4")[0][0] == amounts[3]


def test_a_driver_or_dsn_not_installed_is_named_with_the_fix_and_no_password(ws):
    for query in ("driver=Nope", "driver=Nope&dialect=postgresql", "dsn=NOPE&dialect=postgresql"):
        ws.config.write_text(f'connections:\n  src: "odbc://u:hemmelig42@127.0.0.1:9/db?{query}"\n'
                             f"  dst: sqlite:///{ws.root / 'ledger.db'}\npairs:\n  p:\n    source: src\n    target: dst\n"
                             "    timestamp: {column: updated_at}\n    tables: [items]\n", encoding="utf-8")
        result = ws.cdc("check", str(ws.config))
        out = result.stdout + result.stderr
        assert result.returncode == 2, out
        what = "ODBC driver 'Nope'" if "driver" in query else "ODBC data source 'NOPE'"
        assert f"{what} is not installed on this machine (" in out and "odbcinst -q -" in out, out
        assert "dsn" in query or "installed: 'PostgreSQL ANSI', 'PostgreSQL Unicode'" in out, out
        assert "hemmelig42" not in out and "Traceback" not in out, out
    ws.config.write_text(ws.config.read_text().replace("dsn=NOPE&dialect=postgresql", "driver=/opt/vendor/libx.so"))
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 2 and "add dialect=postgresql, mysql, sqlite or mssql" in result.stderr, result.stderr


def test_sqlite_through_odbc_polls_stamps_as_instants_not_as_text(ws):
    """'2026-03-29 10:30:00+00:00' sorts before '2026-03-29T10:00:00Z' as text, though it is later; and
    '09:45:00-02:00' is 11:45 UTC: read as text against the watermark it would be skipped for good."""
    import sqlite3
    source, ledger = ws.root / "erp.db", ws.root / "ledger.db"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, note TEXT, updated_at DATETIME NOT NULL)")
        conn.execute("INSERT INTO items VALUES (1, 'først', '2026-03-29T10:00:00Z')")

    def config(zone: str = "UTC") -> None:
        ws.config.write_text(f'connections:\n  src: "odbc:///{source}?driver=SQLite3"\n  dst: sqlite:///{ledger}\n'
                             "pairs:\n  p:\n    source: src\n    target: dst\n    capture: timestamp\n"
                             "    timestamp: {column: updated_at, overlap_seconds: 0.001}\n"
                             f"    source_timezone: {zone}\n    tables: [items]\n", encoding="utf-8")

    def run() -> str:
        result = ws.cdc("run", "--once", str(ws.config))
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    config()
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    run()
    for key, stamp in ((2, "2026-03-29 10:30:00+00:00"), (3, "2026-03-29 09:45:00-02:00")):
        with sqlite3.connect(source) as conn:
            conn.execute("INSERT INTO items VALUES (?, 'senere', ?)", (key, stamp))
        assert "1 changes applied" in run()
    with sqlite3.connect(ledger) as conn:
        assert [r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")] == [1, 2, 3]
    with sqlite3.connect(source) as conn:
        conn.execute("INSERT INTO items VALUES (4, 'feil', 'i går')")
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode != 0 and "key [4]" in result.stderr and "'i går'" in result.stderr, result.stderr
    config("Europe/Oslo")
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode != 0 and "write the connection as sqlite:///" in result.stderr, result.stderr


def test_a_server_stopped_under_an_odbc_pair_is_waited_for_and_nothing_is_lost(ws, own_pg_server, own_mysql_server):
    """psqlODBC raises a lost server as '57P01 server closed the connection', MariaDB's driver a refused
    connection as 'HY000 Can't connect (2002)': neither is an OperationalError to SQLAlchemy, which the
    native drivers raise and the core retries. Each server stopped for 4 s: `cdc run` waits and goes on."""
    import subprocess
    import sys

    from compliance.conftest import odbc_url
    from compliance.databases import Database

    pg_native, my_native = own_pg_server.url(), own_mysql_server.url("")
    mexec = pymysql.connect(host="127.0.0.1", port=own_mysql_server.port, user="root", autocommit=True)
    mexec.cursor().execute("CREATE DATABASE ledger")
    mexec.close()
    source = Database("odbc-postgresql", odbc_url(pg_native), pg_native)
    target = Database("odbc-mysql", odbc_url(my_native.rstrip("/") + "/ledger"), my_native.rstrip("/") + "/ledger")
    source.create_items("source")
    target.create_items("target")
    ws.config.write_text(f'connections:\n  src: "{source.url}"\n  dst: "{target.url}"\npairs:\n  p:\n    source: src\n'
                         "    target: dst\n    capture: timestamp\n    timestamp: {column: updated_at, soft_delete: deleted}\n"
                         "    tables: [items]\n    poll_interval: 0.1\n", encoding="utf-8")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    next_id = iter(range(1, 1000))

    def write(rows: int) -> None:
        source.transaction([("INSERT INTO items (id, amount, note, updated_at, deleted) VALUES "
                             "(%s, %s, %s, clock_timestamp(), false)", (i, f"{i}.5", f"rad {i} æøå"))
                            for i in [next(next_id) for _ in range(rows)]])

    def caught_up(seconds: float = 60) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if target.rows() == source.live_rows():
                    return True
            except Exception:  # noqa: BLE001  a server on its way up
                pass
            time.sleep(0.2)
        return False

    write(20)  # copied by the snapshot; the 40 written later are streamed, each once
    run = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(ws.config)], cwd=ws.root,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert caught_up()
        own_pg_server.stop()
        time.sleep(4)
        own_pg_server.start()
        write(20)
        assert caught_up(), "not caught up after the source's restart"
        own_mysql_server.stop()
        write(20)
        status = ws.cdc("status", str(ws.config))  # the pair's state lives in the target: not known now
        assert status.returncode == 1 and "p (timestamp): unknown, state unknown: target cannot be read" in \
            status.stdout and ", failed:" not in status.stdout and "dead letters unknown" in status.stdout, status.stdout
        time.sleep(2)
        own_mysql_server.start()
        assert caught_up(), "not caught up after the target's restart"
        assert run.poll() is None, f"cdc run gave up: {run.stdout.read() if run.poll() is not None else ''}"
    finally:
        run.terminate()
        out = run.communicate(timeout=60)[0]
    assert run.returncode == 0, out
    assert "retrying" in out, out
    streamed = [json.loads(key)[0] for _, key, *_ in target.audit()]
    assert sorted(streamed) == list(range(21, 61)), streamed  # each row once, none twice


def _pair_config(ws, source: str, target: str, table: str, extra: str = "") -> None:
    ws.config.write_text(f'connections:\n  src: "{source}"\n  dst: "{target}"\npairs:\n  p:\n    source: src\n'
                         f"    target: dst\n    capture: timestamp\n    timestamp: {{column: updated_at, overlap_seconds: 60}}\n"
                         f"    tables: [{table}]\n{extra}", encoding="utf-8")


def _ok(ws, *args: str) -> str:
    result = ws.cdc(*args, str(ws.config))
    assert result.returncode == 0, (args, result.stdout + result.stderr)
    return result.stdout + result.stderr


def test_a_timestamptz_change_column_read_through_odbc_is_an_instant_whatever_the_source_timezone(ws, pg_databases):
    """pyodbc reads timestamptz without its zone (in the session's UTC). Taken as wall-clock time in
    source_timezone, 03:00:10 UTC written after 02:59:30 UTC on the night Oslo's clocks go forward
    fell behind the watermark: B was never copied, with exit 0."""
    from compliance.conftest import odbc_url
    source, target = pg_databases(), pg_databases()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text, updated_at timestamptz NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 'A', '2026-03-29 02:59:30+00')")
    _pair_config(ws, odbc_url(source), target, "t", "    source_timezone: Europe/Oslo\n")
    _ok(ws, "init")
    _ok(ws, "run", "--once")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("INSERT INTO t VALUES (2, 'B', '2026-03-29 03:00:10+00')")
    _ok(ws, "run", "--once")
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, "A"), (2, "B")]
    assert "ahead of" not in _ok(ws, "doctor")


def test_a_uuid_column_in_an_odbc_target_is_no_false_conflict(ws, pg_databases):
    """psqlODBC reads a uuid as text: compared with the change's UUID, every update looked like a person's
    edit, and under target_wins the source's update was dropped with exit 0."""
    from compliance.conftest import odbc_url
    source, target = pg_databases(), pg_databases()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, u uuid, at timestamptz, raw bytea, amount numeric(12,2), "
                     "updated_at timestamptz NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-01-01 12:00+02', "
                     "'\\x00ff', 10.00, now())")
    _pair_config(ws, source, odbc_url(target), "t", "    conflict: target_wins\n")
    _ok(ws, "init")
    _ok(ws, "run", "--once")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE t SET amount = 99.99, updated_at = now()")
    _ok(ws, "run", "--once")
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT amount FROM t").fetchone()[0] == Decimal("99.99")
        decisions = conn.execute("SELECT reason FROM cdc_audit_log WHERE op <> 'snapshot'").fetchall()
    assert decisions == [("change",)], decisions


def test_a_money_column_through_psqlodbc_is_read_as_an_exact_decimal_and_written_back(pg_databases):
    """psqlODBC hands money over as a double (a large amount rounded) and refuses one bound into money."""
    from compliance.conftest import odbc_url
    from cdc.adapters.odbc._connect import engine, reach
    native = pg_databases()
    with psycopg.connect(native, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, m money)")
        conn.execute("INSERT INTO t VALUES (1, 92233720368547.77)")
    made = engine(reach(odbc_url(native)))
    try:
        with made.begin() as conn:
            table = sa.Table("t", sa.MetaData(), autoload_with=conn)
            value = conn.execute(sa.select(table.c.m)).scalar()
            assert value == Decimal("92233720368547.77") and isinstance(value, Decimal), repr(value)
            conn.execute(table.update().values(m=Decimal("-0.01")))
    finally:
        made.dispose()
    with psycopg.connect(native) as conn:
        assert conn.execute("SELECT m::numeric FROM t").fetchone()[0] == Decimal("-0.01")


@pytest.mark.parametrize("road", ["odbc money source", "odbc money target", "odbc money into native money"])
def test_money_through_psqlodbc_is_copied_streamed_and_reconciled_exactly(ws, pg_databases, road):
    """psqlODBC's double rounded a money amount past 15 digits on every read, the copy's and the
    stream's (92233720368547758.07 arrived as ...760.00 with exit 0), and reconcile, reading the same
    way, called it equal; a money target made reconcile report 3.50 -> 3.5 for ever; and a psqlODBC money
    source's amounts into a money target psycopg reads as '$11.00' looked changed by someone else: under
    target_wins every update was dropped (helper 48)."""
    from compliance.conftest import odbc_url
    source, target = pg_databases(), pg_databases()
    kinds = {"odbc money source": ("money", "numeric(20,2)"), "odbc money target": ("numeric(20,2)", "money"),
             "odbc money into native money": ("money", "money")}[road]
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE t (id int PRIMARY KEY, amt {kinds[0]}, updated_at timestamptz NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, 92233720368547758.07, now()), (2, 90071992547409.93, now()), "
                     "(3, 3.50, now()), (4, NULL, now())")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE t (id int PRIMARY KEY, amt {kinds[1]}, updated_at timestamptz NOT NULL)")
    urls = (source, odbc_url(target)) if road == "odbc money target" else (odbc_url(source), target)
    _pair_config(ws, *urls, "t", "    conflict: target_wins\n")
    _ok(ws, "init")
    _ok(ws, "run", "--once")
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("UPDATE t SET amt = -70368744177664.01, updated_at = now() WHERE id = 3")
    _ok(ws, "run", "--once")
    rows = {}
    for name, url in (("source", source), ("target", target)):
        with psycopg.connect(url) as conn:
            rows[name] = conn.execute("SELECT id, amt::numeric FROM t ORDER BY id").fetchall()
    assert rows["target"] == rows["source"] == [(1, Decimal("92233720368547758.07")), (2, Decimal("90071992547409.93")),
                                                (3, Decimal("-70368744177664.01")), (4, None)], rows
    out = _ok(ws, "reconcile")
    assert "equal" in out.lower(), out
    with psycopg.connect(target) as conn:  # psycopg reads a money target as $1,234.56: still the amount written
        decisions = conn.execute("SELECT reason FROM cdc_audit_log WHERE op = 'update'").fetchall()
    assert decisions == [("change",)], decisions


def test_cdc_init_declares_another_databases_money_as_exact_numeric_without_its_collations(tmp_path):
    from sqlalchemy.dialects import postgresql

    from cdc.registry import adapter_for
    target = adapter_for("sqlite:///x.db").target(f"sqlite:///{tmp_path / 'x.db'}")
    table = target.table_definition("t", [sa.Column("id", sa.Integer), sa.Column("amt", postgresql.MONEY())], ("id",),
                                    "postgresql")
    assert str(table.c.amt.type) == "NUMERIC(19, 2)"
    from sqlalchemy.dialects import mysql  # a MariaDB collation means nothing to another database
    code = sa.Column("code", mysql.VARCHAR(20, collation="utf8mb4_bin"))
    table = target.table_definition("u", [sa.Column("id", sa.Integer), code], ("id",), "mysql")
    assert table.c.code.type.collation is None and table.c.code.type.length == 20
    target.close()


def test_a_password_in_an_odbc_connection_string_is_masked_and_the_drivers_settings_are_added(ws, pg_databases):
    """?odbc_connect= carries a whole connection string, its PWD= too: status, check and doctor print it
    masked; and the psqlODBC settings the adapter needs are added where the string does not set them."""
    from urllib.parse import quote_plus
    native = sa.engine.make_url(pg_databases())
    with psycopg.connect(native.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute("CREATE ROLE cdc LOGIN SUPERUSER PASSWORD 'hemmelig;}42'")
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, updated_at timestamptz NOT NULL, flag boolean, raw bytea)")
        conn.execute("INSERT INTO t VALUES (1, now(), true, '\\x00')")
    string = (f"DRIVER={{PostgreSQL Unicode}};Server=127.0.0.1;Port={native.port};Database={native.database};"
              "UID=cdc;PWD={hemmelig;}}42}")
    _pair_config(ws, f"odbc:///?odbc_connect={quote_plus(string)}", f"sqlite:///{ws.root / 'ledger.db'}", "t")
    out = _ok(ws, "init") + _ok(ws, "run", "--once") + _ok(ws, "status") + _ok(ws, "status", "--json") + \
        _ok(ws, "check") + _ok(ws, "doctor")
    assert "hemmelig" not in out and "PWD%3D***" in out, out
    import sqlite3
    with sqlite3.connect(ws.root / "ledger.db") as conn:
        assert conn.execute("SELECT flag, raw FROM t").fetchone() == (1, b"\x00")


@pytest.mark.parametrize("url, says", [
    ("odbc://postgres@127.0.0.1:{port}/postgres?driver=PostgreSQL Unicode&dialect=mysql",
     "the driver reaches PostgreSQL, not mysql as the URL says: drop dialect="),
    ("odbc://postgres@127.0.0.1:{port}/postgres?driver=PostgreSQL Unicode&dialect=mssql",
     "the driver reaches PostgreSQL, not mssql as the URL says"),
    ("odbc://postgres@127.0.0.1:{port}/postgres?driver=PostgreSQL Unicode&dialect=sqlite",
     "the driver reaches PostgreSQL, not sqlite as the URL says"),
    ("odbc://postgres@127.0.0.1:{port}/postgres?driver=PostgreSQL ANSI", "use its Unicode driver"),
    ("odbc:///erp.db?driver=SQLite3", "write its absolute path"),
    ("odbc:////nowhere/erp.db?driver=SQLite3", "SQLite database file /nowhere/erp.db does not exist"),
])
def test_odbc_mistakes_are_named_with_the_fix(ws, pg_server, url, says):
    port = sa.engine.make_url(pg_server).port
    _pair_config(ws, url.format(port=port), f"sqlite:///{ws.root / 'ledger.db'}", "t")
    result = ws.cdc("check", str(ws.config))
    out = result.stdout + result.stderr
    assert result.returncode == 2 and says in out and "Traceback" not in out, out


def test_a_capture_mode_the_database_behind_odbc_lacks_is_refused_by_check_with_its_line(ws, pg_server):
    """The ODBC adapter reaches several databases: `cdc check` judges the capture mode by the one the URL
    reaches (PostgreSQL through ODBC: no logical replication), not by every mode some ODBC database has."""
    port = sa.engine.make_url(pg_server).port
    ws.config.write_text(f'connections:\n  src: "odbc://postgres@127.0.0.1:{port}/postgres?driver=PostgreSQL Unicode"\n'
                         f"  dst: sqlite:///ledger.db\npairs:\n  p:\n    source: src\n    target: dst\n"
                         "    capture: logical\n    tables: [t]\n", encoding="utf-8")
    result = ws.cdc("check", str(ws.config))
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "capture 'logical' is not supported by a postgresql database through the odbc " \
        "adapter (supported: timestamp, trigger)" in out \
        and "line 8" in out and "Traceback" not in out, out


def test_mysqls_own_pyformat_sql_is_given_to_pyodbc_with_question_marks():
    """The MySQL and PostgreSQL adapters' trigger capture writes SQL for PyMySQL and psycopg; through ODBC
    it is sent with ``?``."""
    from cdc.adapters.odbc._connect import _qmark
    assert _qmark("SELECT %(a)s, %(b)s, %(a)s LIKE 'x%%'", {"a": 1, "b": 2}) == ("SELECT ?, ?, ? LIKE 'x%'", (1, 2, 1))
    assert _qmark("SELECT %s WHERE y > %s", (1, 2)) == ("SELECT ? WHERE y > ?", (1, 2))
    assert _qmark("INSERT INTO t VALUES (%(a)s)", [{"a": 1}, {"a": 2}]) == ("INSERT INTO t VALUES (?)", [(1,), (2,)])
    # SQLAlchemy's statements (already ?) and statements without parameters pass as they are.
    assert _qmark("SELECT DATE_FORMAT(x, '%H:%i:%s') = ?", (1,)) == ("SELECT DATE_FORMAT(x, '%H:%i:%s') = ?", (1,))
    assert _qmark("SHOW STATUS LIKE 'binlog_%%'", ()) == ("SHOW STATUS LIKE 'binlog_%%'", ())
    # psycopg binds a list as an array; pyodbc binds no list: the array's text form, which PostgreSQL reads.
    assert _qmark("SELECT 1 WHERE tbl = ANY(%(t)s)", {"t": ["a", 'b"c', None]}) == \
        ("SELECT 1 WHERE tbl = ANY(?)", ('{"a","b\\"c",NULL}',))


def test_a_driver_whose_name_says_nothing_is_checked_against_the_database_it_reaches(ws, pg_server):
    """A vendor's driver name tells no database: the URL's dialect= is taken, and the first connection
    checks it against the product the server names."""
    import os
    import subprocess
    import sys
    (ws.root / "odbcinst.ini").write_text("[Vendor Gateway]\nDriver=psqlodbcw.so\n", encoding="utf-8")
    port = sa.engine.make_url(pg_server).port
    _pair_config(ws, f"odbc://postgres@127.0.0.1:{port}/postgres?driver=Vendor Gateway&dialect=mysql",
                 f"sqlite:///{ws.root / 'ledger.db'}", "t")
    env = {**os.environ, "ODBCSYSINI": str(ws.root)}  # unixODBC reads this folder's odbcinst.ini
    result = subprocess.run([sys.executable, "-m", "cdc", "check", str(ws.config)], cwd=ws.root, env=env,
                            capture_output=True, text=True)
    out = result.stdout + result.stderr
    assert result.returncode == 2 and "the ODBC connection reaches PostgreSQL, not mysql as the URL says" in out \
        and "Traceback" not in out, out


def test_a_refused_odbc_login_is_the_drivers_words_with_the_connections_name(ws, pg_server):
    port = sa.engine.make_url(pg_server).port
    _pair_config(ws, f"odbc://nobody:hemmelig@127.0.0.1:{port}/postgres?driver=PostgreSQL Unicode",
                 f"sqlite:///{ws.root / 'ledger.db'}", "t")
    result = ws.cdc("install", str(ws.config))
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "error: source src: connection failed: [08001] " in out \
        and 'role "nobody" does not' in out, out
    assert "('28000'" not in out and "hemmelig" not in out and "Traceback" not in out, out


def test_a_driver_written_in_braces_is_the_driver():
    from cdc.adapters.odbc._connect import reach
    assert reach("odbc://u@h/db?driver={PostgreSQL Unicode}").connection_string.startswith(
        "DRIVER={PostgreSQL Unicode};")
    assert reach("odbc://u@h/db?driver=Vendor&dialect=PostgreSQL").dialect == "postgresql"  # as written in docs


@pytest.mark.parametrize("road", ["odbc-postgresql to postgresql", "postgresql to odbc-postgresql",
                                  "postgresql to odbc-mysql"])
def test_a_time_keeps_its_fraction_of_a_second_through_odbc(ws, pg_databases, mysql_databases, road):
    """pyodbc binds a time without its fraction, and MariaDB's driver reads one without it: 23:59:59.999999
    arrived as 23:59:59, and reconcile then saw a difference it could not repair."""
    from compliance.conftest import odbc_url
    source_kind, target_kind = road.split(" to ")
    source = pg_databases()
    target = mysql_databases() if target_kind == "odbc-mysql" else pg_databases()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY, c time(6), updated_at timestamptz NOT NULL)")
        conn.execute("INSERT INTO t VALUES (1, '10:00:00.5', now()), (2, '23:59:59.999999', now())")
    _pair_config(ws, odbc_url(source) if source_kind.startswith("odbc") else source,
                 odbc_url(target) if target_kind.startswith("odbc") else target, "t")
    _ok(ws, "init")
    _ok(ws, "run", "--once")
    assert "equal" in _ok(ws, "reconcile").lower()
    if target_kind == "odbc-mysql":
        parts = sa.engine.make_url(target)
        with pymysql.connect(host=parts.host, port=parts.port, user=parts.username, database=parts.database) as conn:
            with conn.cursor() as cursor:
                cursor.execute("SELECT CAST(c AS CHAR) FROM t ORDER BY id")
                assert [r[0] for r in cursor.fetchall()] == ["10:00:00.500000", "23:59:59.999999"]
    else:
        with psycopg.connect(target) as conn:
            assert [r[0] for r in conn.execute("SELECT c::text FROM t ORDER BY id")] == ["10:00:00.5", "23:59:59.999999"]
