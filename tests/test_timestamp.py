"""Capture `timestamp`: watermark (updated_at, key), an overlap window, soft deletes, rows dated in the future."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

SCHEMA = """
CREATE TABLE products (sku VARCHAR(20) PRIMARY KEY, name TEXT NOT NULL, price NUMERIC(12,2) NOT NULL,
    updated_at TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);
INSERT INTO products VALUES ('A-1', 'Brunost', '89.90', '2024-05-01 10:00:00', 0);
INSERT INTO products VALUES ('A-2', 'Lefse', '45.00', '2024-05-01 10:00:00', 0);
"""


def timestamp_pair(ws):
    ws.sql(ws.source, SCHEMA)
    ws.write_config("""
        source: src
        target: dst
        capture: timestamp
        tables: [products]
        timestamp: {column: updated_at, soft_delete: deleted, overlap_seconds: 30}
    """)
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0


def run(ws) -> str:
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_rows_sharing_or_trailing_the_watermark_are_not_missed(ws):
    timestamp_pair(ws)
    ws.sql(ws.source, "UPDATE products SET price = '99.90', updated_at = '2024-05-01 10:05:00' WHERE sku = 'A-1'")
    assert "1 changes applied" in run(ws)
    # Committed late with the same timestamp as the watermark, and one 10 s older (inside the overlap).
    ws.sql(ws.source, "INSERT INTO products VALUES ('A-3', 'Kjøttkaker', '129.00', '2024-05-01 10:05:00', 0);"
                      "INSERT INTO products VALUES ('A-4', 'Multekrem', '59.50', '2024-05-01 10:04:50', 0);")
    assert "2 changes applied" in run(ws)
    assert "0 changes applied" in run(ws)  # re-reading the overlap window applies nothing twice
    assert ws.rows(ws.target, "products") == ws.rows(ws.source, "products")


def test_missing_timestamp_column_is_a_clear_error(ws):
    ws.sql(ws.source, "CREATE TABLE products (sku TEXT PRIMARY KEY, changed TEXT)")
    ws.write_config("source: src\ntarget: dst\ncapture: timestamp\ntables: [products]\ntimestamp: {column: updated_at}")
    result = ws.cdc("install", str(ws.config))
    assert result.returncode == 1 and "source table products has no timestamp column 'updated_at'" in result.stderr


# -- a row dated in the future ----------------------------------------------------------------
def now_text(seconds: float = 0) -> str:
    """The machine's UTC time (SQLite's clock) as the products table writes it."""
    moment = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def test_a_future_dated_row_does_not_hide_later_changes(ws):
    timestamp_pair(ws)
    ws.sql(ws.source, "INSERT INTO products VALUES ('F-1', 'Fremtid', '1.00', '2099-01-01 00:00:00', 0)")
    out = ws.cdc("run", "--once", str(ws.config))
    assert out.returncode == 0 and "1 changes applied" in out.stdout, out.stdout + out.stderr
    assert "dated ahead of the source's clock" in out.stderr and "F-1" in out.stderr, out.stderr
    checkpoint = json.loads(ws.query(ws.target, "SELECT position FROM cdc_checkpoints")[0][0])
    assert checkpoint["products"]["ts"] < "2099", checkpoint  # the watermark stops at the source's clock

    # Later inserts and updates, dated now as an application would: each applied exactly once.
    ws.sql(ws.source, f"INSERT INTO products VALUES ('A-5', 'Rømmegrøt', '75.00', '{now_text()}', 0);"
                      f"UPDATE products SET price = '95.00', updated_at = '{now_text()}' WHERE sku = 'A-1'")
    assert "2 changes applied" in run(ws)
    ws.sql(ws.source, f"UPDATE products SET price = '96.00', updated_at = '{now_text()}' WHERE sku = 'A-1'")
    assert "1 changes applied" in run(ws)
    assert "0 changes applied" in run(ws)  # the overlap and the future row are read again, applied never twice
    # The future row itself changes: applied once more, and only once.
    ws.sql(ws.source, "UPDATE products SET name = 'Fremtid 2' WHERE sku = 'F-1'")
    assert "1 changes applied" in run(ws)
    assert "0 changes applied" in run(ws)
    assert ws.rows(ws.target, "products") == ws.rows(ws.source, "products")
    applied = ws.query(ws.target, "SELECT key, count(*) FROM cdc_audit_log WHERE op != 'snapshot' GROUP BY key")
    assert sorted(applied) == [('["A-1"]', 2), ('["A-5"]', 1), ('["F-1"]', 2)]

    doctor = ws.cdc("doctor", str(ws.config))
    assert "[WARN] products: 1 row(s) with updated_at ahead of the source's clock" in doctor.stdout, doctor.stdout
    assert "F-1" in doctor.stdout and "2099-01-01" in doctor.stdout


def test_a_watermark_past_the_source_clock_stops_the_pair(ws):
    """A checkpoint written by a version that let the watermark run ahead (or edited by hand)."""
    timestamp_pair(ws)
    checkpoint = json.loads(ws.query(ws.target, "SELECT position FROM cdc_checkpoints")[0][0])
    checkpoint["products"]["ts"] = "2099-01-01 00:00:00"
    ws.sql(ws.target, f"UPDATE cdc_checkpoints SET position = '{json.dumps(checkpoint)}'")
    ws.sql(ws.source, f"UPDATE products SET price = '1.00', updated_at = '{now_text()}' WHERE sku = 'A-2'")
    stopped = ws.cdc("run", "--once", str(ws.config))
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr
    assert "products" in stopped.stderr and "2099-01-01" in stopped.stderr, stopped.stderr
    assert "cdc run --resnapshot" in stopped.stderr
    assert "failed: " in ws.cdc("status", str(ws.config)).stdout
    assert ws.cdc("run", "--once", "--resnapshot", str(ws.config)).returncode == 0
    assert ws.rows(ws.target, "products") == ws.rows(ws.source, "products")


@pytest.mark.parametrize("column_type, zone, now", [
    ("TIMESTAMPTZ", "UTC", "now()"),
    ("TIMESTAMP", "Europe/Oslo", "(now() AT TIME ZONE 'Europe/Oslo')"),  # wall-clock time in the pair's zone
])
def test_a_future_dated_row_on_postgresql(ws, pg_databases, column_type, zone, now):
    import psycopg

    source, target = pg_databases(), pg_databases()

    def execute(url, statement):
        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(statement)
            return cursor.fetchall() if cursor.description else []

    execute(source, f"CREATE TABLE products (sku TEXT PRIMARY KEY, price NUMERIC(12,2) NOT NULL, "
                    f"updated_at {column_type} NOT NULL)")
    execute(source, f"INSERT INTO products VALUES ('A-1', 10.00, {now} - interval '1 hour'), "
                    "('F-1', 1.00, '2099-01-01 00:00:00')")
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  p:\n    source: src\n"
                         f"    target: dst\n    capture: timestamp\n    tables: [products]\n"
                         f"    source_timezone: {zone}\n"
                         "    timestamp: {column: updated_at, overlap_seconds: 30}\n", encoding="utf-8")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert "snapshot 2 rows" in run(ws)
    for step in range(3):  # later inserts and updates, dated by the source's clock
        execute(source, f"INSERT INTO products VALUES ('B-{step}', {step}.50, {now})")
        execute(source, f"UPDATE products SET price = price + 1, updated_at = {now} WHERE sku = 'A-1'")
        out = ws.cdc("run", "--once", str(ws.config))
        assert out.returncode == 0 and "2 changes applied" in out.stdout, out.stdout + out.stderr
        assert "0 changes applied" in run(ws)
    execute(source, "UPDATE products SET price = 2.00 WHERE sku = 'F-1'")
    out = ws.cdc("run", "--once", str(ws.config))
    assert "1 changes applied" in out.stdout and "dated ahead of the source's clock" in out.stderr, out.stderr
    assert "0 changes applied" in run(ws)
    order = "SELECT sku, price, updated_at FROM products ORDER BY sku"
    assert execute(target, order) == execute(source, order)
    audited = execute(target, "SELECT key, count(*) FROM cdc_audit_log WHERE op != 'snapshot' GROUP BY key ORDER BY key")
    assert audited == [('["A-1"]', 3), ('["B-0"]', 1), ('["B-1"]', 1), ('["B-2"]', 1), ('["F-1"]', 1)]
    doctor = ws.cdc("doctor", str(ws.config)).stdout
    assert "[WARN] products: 1 row(s) with updated_at ahead of the source's clock" in doctor and "F-1" in doctor, doctor


@pytest.mark.parametrize("column_type", ["DATETIME(6)", "TIMESTAMP(6)"])
def test_a_future_dated_row_on_mariadb(ws, mysql_url, pg_url, column_type):
    import psycopg
    import pymysql
    import sqlalchemy as sa

    parts = sa.engine.make_url(mysql_url)

    def execute(statement):
        with pymysql.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password or "",
                             database=parts.database, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute("SET time_zone = '+00:00'")
            cursor.execute(statement)
            return [tuple(r) for r in cursor.fetchall()]

    execute(f"CREATE TABLE products (sku VARCHAR(20) PRIMARY KEY, price DECIMAL(12,2) NOT NULL, "
            f"updated_at {column_type} NOT NULL) ENGINE=InnoDB")
    execute("INSERT INTO products VALUES ('A-1', 10.00, UTC_TIMESTAMP(6) - INTERVAL 1 HOUR), "
            "('F-1', 1.00, '2037-12-31 00:00:00')")  # TIMESTAMP ends in 2038
    ws.config.write_text(f"connections:\n  src: {mysql_url}\n  dst: {pg_url}\npairs:\n  p:\n    source: src\n"
                         "    target: dst\n    capture: timestamp\n    tables: [products]\n"
                         "    timestamp: {column: updated_at, overlap_seconds: 30}\n", encoding="utf-8")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert "snapshot 2 rows" in run(ws)
    execute("INSERT INTO products VALUES ('B-1', 1.50, UTC_TIMESTAMP(6))")
    execute("UPDATE products SET price = 11.00, updated_at = UTC_TIMESTAMP(6) WHERE sku = 'A-1'")
    assert "2 changes applied" in run(ws)
    assert "0 changes applied" in run(ws)
    with psycopg.connect(pg_url) as conn:
        target = conn.execute("SELECT sku, price FROM products ORDER BY sku").fetchall()
    assert target == execute("SELECT sku, price FROM products ORDER BY sku")
    doctor = ws.cdc("doctor", str(ws.config)).stdout
    assert "[WARN] products: 1 row(s) with updated_at ahead of the source's clock" in doctor and "F-1" in doctor, doctor


# -- an epoch number as the change column (finding 4a) -----------------------------------------
def epoch_pair(ws, unit: str | None, per_second: int = 1):
    ws.sql(ws.source, "CREATE TABLE orders (id INTEGER PRIMARY KEY, amount TEXT NOT NULL, changed INTEGER NOT NULL);"
                      f"INSERT INTO orders VALUES (1, '10.00', {int(time.time() - 3600) * per_second})")
    ws.write_config(f"""
        source: src
        target: dst
        capture: timestamp
        tables: [orders]
        timestamp: {{column: changed, overlap_seconds: 30{', unit: ' + unit if unit else ''}}}
    """)


@pytest.mark.parametrize("unit, per_second", [("seconds", 1), ("milliseconds", 1000)])
def test_an_epoch_row_dated_2099_does_not_hide_later_changes(ws, unit, per_second):
    epoch_pair(ws, unit, per_second)
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert "snapshot 1 rows" in run(ws)
    year_2099 = 4102444800 * per_second
    ws.sql(ws.source, f"INSERT INTO orders VALUES (2, '99.00', {year_2099})")
    out = ws.cdc("run", "--once", str(ws.config))
    assert out.returncode == 0 and "1 changes applied" in out.stdout, out.stdout + out.stderr
    assert "dated ahead of the source's clock" in out.stderr and "[2]" in out.stderr, out.stderr
    mark = json.loads(ws.query(ws.target, "SELECT position FROM cdc_checkpoints")[0][0])["orders"]
    assert mark["at"] <= time.time() + 1 and mark["ts"] < "2099", mark  # capped at the source's clock
    # Later inserts and updates stamped now, as the application would: each applied exactly once.
    now = int(time.time() * per_second)
    ws.sql(ws.source, f"INSERT INTO orders VALUES (3, '30.00', {now}); "
                      f"UPDATE orders SET amount = '11.00', changed = {now} WHERE id = 1")
    assert "2 changes applied" in run(ws)
    assert "0 changes applied" in run(ws)
    assert ws.rows(ws.target, "orders") == ws.rows(ws.source, "orders")
    doctor = ws.cdc("doctor", str(ws.config)).stdout
    assert f"[WARN] orders: 1 row(s) with changed ahead of the source's clock" in doctor, doctor
    assert f"(2) {year_2099}" in doctor, doctor
    status = ws.cdc("status", str(ws.config))
    assert status.returncode == 0, status.stdout  # applied, nothing missing: a warning, not a failure
    assert "warning     orders: 1 row(s) with changed ahead of the source's clock" in status.stdout, status.stdout


def test_a_numeric_change_column_without_a_unit_is_refused(ws):
    epoch_pair(ws, None, 1000)
    result = ws.cdc("install", str(ws.config))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "source table orders: timestamp column changed is a number" in result.stderr, result.stderr
    assert "{unit: seconds | milliseconds | microseconds}" in result.stderr and "{unit: counter}" in result.stderr
    assert "looks like epoch milliseconds" in result.stderr, result.stderr


def test_a_version_counter_has_no_clock(ws):
    """unit: counter keeps the old behaviour for a version number: no cap, no future warning."""
    ws.sql(ws.source, "CREATE TABLE orders (id INTEGER PRIMARY KEY, amount TEXT NOT NULL, version INTEGER NOT NULL);"
                      "INSERT INTO orders VALUES (1, '10.00', 5000000000000)")
    ws.write_config("source: src\ntarget: dst\ncapture: timestamp\ntables: [orders]\n"
                    "timestamp: {column: version, unit: counter, overlap_seconds: 2}")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert "snapshot 1 rows" in run(ws)
    ws.sql(ws.source, "UPDATE orders SET amount = '12.00', version = 5000000000001 WHERE id = 1;"
                      "INSERT INTO orders VALUES (2, '1.00', 5000000000001)")
    assert "2 changes applied" in run(ws)
    assert "0 changes applied" in run(ws)
    mark = json.loads(ws.query(ws.target, "SELECT position FROM cdc_checkpoints")[0][0])["orders"]
    assert mark["ts"] == 5000000000001, mark
    doctor = ws.cdc("doctor", str(ws.config)).stdout
    assert "ahead of the source's clock" not in doctor
    # Rows 1 and 2 share 5000000000001: a per-row version number would look so, and lose changes.
    assert "[WARN] orders: 1 row(s) share their version value with another row" in doctor, doctor
    ws.sql(ws.source, "UPDATE orders SET version = 5000000000002 WHERE id = 2")
    assert "share their version value" not in ws.cdc("doctor", str(ws.config)).stdout


# -- SQLite text stamps compared as instants (finding 4b) --------------------------------------
def text_pair(ws, first_stamp: str):
    ws.sql(ws.source, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, updated_at TEXT);"
                      f"INSERT INTO notes VALUES (1, 'first', '{first_stamp}')")
    ws.write_config("source: src\ntarget: dst\ncapture: timestamp\ntables: [notes]\n"
                    "timestamp: {column: updated_at, overlap_seconds: 30}")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert "snapshot 1 rows" in run(ws)


def test_text_stamps_with_offsets_and_mixed_spellings_compare_as_instants(ws):
    text_pair(ws, "2026-01-01T10:00:00Z")
    # ' ' sorts before 'T': as text, 10:30 would be before the watermark 10:00Z.
    ws.sql(ws.source, "INSERT INTO notes VALUES (2, 'space', '2026-01-01 10:30:00');"
                      "INSERT INTO notes VALUES (3, 'summer', '2026-01-01 13:00:00+02:00')")  # 11:00Z
    assert "2 changes applied" in run(ws)
    # 12:30+01:00 is 11:30Z, later than 13:00+02:00, though '12:30' sorts before '13:00' as text.
    ws.sql(ws.source, "INSERT INTO notes VALUES (4, 'winter', '2026-01-01 12:30:00+01:00');"
                      "INSERT INTO notes VALUES (5, 'fraction', '2026-01-01T11:45:00.250+00:00')")
    assert "2 changes applied" in run(ws)
    assert "0 changes applied" in run(ws)  # the overlap re-read applies nothing twice
    assert ws.rows(ws.target, "notes") == ws.rows(ws.source, "notes")
    audited = ws.query(ws.target, "SELECT key FROM cdc_audit_log WHERE op != 'snapshot' ORDER BY key")
    assert audited == [("[2]",), ("[3]",), ("[4]",), ("[5]",)]


def test_a_text_stamp_that_is_no_time_stops_the_pair_by_key(ws):
    text_pair(ws, "2026-01-01 10:00:00")
    ws.sql(ws.source, "INSERT INTO notes VALUES (7, 'typo', '01/02/2026 10:00')")
    stopped = ws.cdc("run", "--once", str(ws.config))
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr
    assert "source table notes, key [7]: timestamp column updated_at holds '01/02/2026 10:00'" in stopped.stderr
    doctor = ws.cdc("doctor", str(ws.config))
    assert doctor.returncode == 1 and "[FAIL] source table notes, key [7]" in doctor.stdout, doctor.stdout
    ws.sql(ws.source, "UPDATE notes SET updated_at = '2026-01-02 10:00:00' WHERE id = 7")
    assert "1 changes applied" in run(ws)
    assert ws.rows(ws.target, "notes") == ws.rows(ws.source, "notes")


def test_naive_text_is_read_in_the_source_timezone(ws):
    """Offsets next to zone-less text written in Europe/Oslo: the zone-less ones are Oslo time."""
    ws.sql(ws.source, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, updated_at TEXT);"
                      "INSERT INTO notes VALUES (1, 'first', '2026-01-01T10:00:00+00:00')")
    ws.write_config("source: src\ntarget: dst\ncapture: timestamp\ntables: [notes]\nsource_timezone: Europe/Oslo\n"
                    "timestamp: {column: updated_at, overlap_seconds: 30}")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert "snapshot 1 rows" in run(ws)
    ws.sql(ws.source, "INSERT INTO notes VALUES (2, 'oslo', '2026-01-01 11:30:00')")  # 10:30Z
    assert "1 changes applied" in run(ws)
    ws.sql(ws.source, "INSERT INTO notes VALUES (3, 'utc', '2026-01-01T10:45:00Z')")  # before 11:30 as text
    assert "1 changes applied" in run(ws)
    assert ws.rows(ws.target, "notes") == ws.rows(ws.source, "notes")


# -- rows whose change time is NULL (finding 4c) -----------------------------------------------
def test_rows_without_a_change_time_are_reported_until_given_one(ws):
    text_pair(ws, "2026-01-01 10:00:00")
    ws.sql(ws.source, "INSERT INTO notes VALUES (8, 'no time', NULL); INSERT INTO notes VALUES (9, 'no time', NULL)")
    out = ws.cdc("run", "--once", str(ws.config))
    assert out.returncode == 0 and "0 changes applied" in out.stdout, out.stdout + out.stderr
    assert "notes: 2 row(s) with updated_at NULL: their inserts and updates are not captured" in out.stderr, out.stderr
    doctor = ws.cdc("doctor", str(ws.config))
    assert doctor.returncode == 1 and "[FAIL] notes: 2 row(s) with updated_at NULL" in doctor.stdout, doctor.stdout
    status = ws.cdc("status", str(ws.config))
    assert status.returncode == 1, status.stdout  # changes may be missing from the target: not healthy
    assert "problem     notes: 2 row(s) with updated_at NULL" in status.stdout, status.stdout
    listed = json.loads(ws.cdc("status", "--json", str(ws.config)).stdout)[0]
    assert listed["healthy"] is False and listed["warnings"][0]["level"] == "fail", listed
    # The fix the message gives: a time for each, after which they are captured like any other row.
    ws.sql(ws.source, "UPDATE notes SET updated_at = CURRENT_TIMESTAMP WHERE updated_at IS NULL")
    assert "2 changes applied" in run(ws)
    assert ws.rows(ws.target, "notes") == ws.rows(ws.source, "notes")
    assert ws.cdc("status", str(ws.config)).returncode == 0
    assert ws.cdc("doctor", str(ws.config)).returncode == 0


# -- the same traps on PostgreSQL and MariaDB ----------------------------------------------------
def server_pairs(ws, source_url: str, target_url: str, zone: str) -> None:
    """Pair `epoch`: orders stamped in epoch milliseconds; pair `dated`: notes with a date/time that may be NULL."""
    pair = ("    source: src\n    target: dst\n    capture: timestamp\n    source_timezone: " + zone + "\n")
    ws.config.write_text(f"connections:\n  src: {source_url}\n  dst: {target_url}\npairs:\n"
                         f"  epoch:\n{pair}    tables: [orders]\n"
                         "    timestamp: {column: changed, overlap_seconds: 30, unit: milliseconds}\n"
                         f"  dated:\n{pair}    tables: [notes]\n"
                         "    timestamp: {column: changed, overlap_seconds: 30}\n", encoding="utf-8")


def check_server_traps(ws, execute, target_rows) -> str:
    """A row dated 2099 in epoch milliseconds hides nothing; a NULL change time is reported; doctor's output."""
    for command in ("init", "install"):
        result = ws.cdc(command, str(ws.config))
        assert result.returncode == 0, result.stdout + result.stderr
    assert "snapshot 1 rows" in run(ws)
    execute("INSERT INTO orders VALUES (2, 99.00, 4102444800000)")  # 2099-01-01 in milliseconds
    out = ws.cdc("run", "--once", str(ws.config))
    assert out.returncode == 0 and "pair epoch: 1 changes applied" in out.stdout, out.stdout + out.stderr
    assert "dated ahead of the source's clock" in out.stderr and "[2]" in out.stderr, out.stderr
    now = int(time.time() * 1000)
    execute(f"INSERT INTO orders VALUES (3, 3.00, {now})")
    execute(f"UPDATE orders SET amount = 11.00, changed = {now} WHERE id = 1")
    assert "pair epoch: 2 changes applied" in run(ws)
    assert "pair epoch: 0 changes applied" in run(ws)
    order = "SELECT id, amount FROM orders ORDER BY id"
    assert target_rows(order) == execute(order)
    execute("INSERT INTO notes VALUES (2, 'no time', NULL)")
    out = ws.cdc("run", "--once", str(ws.config))
    assert "notes: 1 row(s) with changed NULL" in out.stderr, out.stderr
    doctor = ws.cdc("doctor", str(ws.config))
    assert "[WARN] orders: 1 row(s) with changed ahead of the source's clock" in doctor.stdout, doctor.stdout
    assert doctor.returncode == 1 and "[FAIL] notes: 1 row(s) with changed NULL" in doctor.stdout, doctor.stdout
    status = ws.cdc("status", str(ws.config))
    assert status.returncode == 1 and "problem     notes: 1 row(s) with changed NULL" in status.stdout, status.stdout
    assert "warning     orders: 1 row(s) with changed ahead" in status.stdout, status.stdout
    return doctor.stdout


def test_epoch_and_null_change_times_on_postgresql(ws, pg_databases):
    import psycopg

    source, target = pg_databases(), pg_databases()

    def execute(statement, url=source):
        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(statement)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []

    execute("CREATE TABLE orders (id int PRIMARY KEY, amount numeric(12,2) NOT NULL, changed bigint NOT NULL)")
    execute("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, changed timestamp)")  # wall-clock time
    execute(f"INSERT INTO orders VALUES (1, 10.00, {int(time.time() - 3600) * 1000})")
    execute("INSERT INTO notes VALUES (1, 'first', now() AT TIME ZONE 'Europe/Oslo' - interval '1 hour')")
    server_pairs(ws, source, target, "Europe/Oslo")
    doctor = check_server_traps(ws, execute, lambda sql: execute(sql, target))
    # Wall-clock time in a zone that puts clocks back: the repeated hour needs an hour of overlap.
    assert "[WARN] notes: changed has no zone and Europe/Oslo puts clocks back" in doctor, doctor


@pytest.mark.parametrize("column_type", ["DATETIME(6)", "TIMESTAMP(6)"])
def test_epoch_and_null_change_times_on_mariadb(ws, mysql_url, pg_url, column_type):
    import psycopg
    import pymysql
    import sqlalchemy as sa

    parts = sa.engine.make_url(mysql_url)

    def execute(statement):
        with pymysql.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password or "",
                             database=parts.database, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute("SET time_zone = '+00:00'")
            cursor.execute(statement)
            return [tuple(r) for r in cursor.fetchall()]

    def target_rows(statement):
        with psycopg.connect(pg_url) as conn:
            return [tuple(r) for r in conn.execute(statement).fetchall()]

    execute("CREATE TABLE orders (id INT PRIMARY KEY, amount DECIMAL(12,2) NOT NULL, changed BIGINT NOT NULL)")
    execute(f"CREATE TABLE notes (id INT PRIMARY KEY, body TEXT NOT NULL, changed {column_type} NULL)")
    execute(f"INSERT INTO orders VALUES (1, 10.00, {int(time.time() - 3600) * 1000})")
    execute("INSERT INTO notes VALUES (1, 'first', UTC_TIMESTAMP(6) - INTERVAL 1 HOUR)")
    server_pairs(ws, mysql_url, pg_url, "UTC")
    doctor = check_server_traps(ws, execute, target_rows)
    assert "puts clocks back" not in doctor  # UTC has no repeated hour


def test_a_checkpoint_written_before_instants_goes_on_where_it_was(ws):
    """A mark of the previous format ({"ts": stamp as stored, "seen": {key: [hash, stamp]}}) is read
    with the column's unit: nothing applied twice, nothing skipped."""
    timestamp_pair(ws)
    checkpoint = json.loads(ws.query(ws.target, "SELECT position FROM cdc_checkpoints")[0][0])
    mark = checkpoint["products"]
    checkpoint["products"] = {"ts": "2024-05-01 10:00:00",
                              "seen": {tag: [entry[0], "2024-05-01 10:00:00"] for tag, entry in mark["seen"].items()}}
    assert len(checkpoint["products"]["seen"]) == 2, mark
    ws.sql(ws.target, f"UPDATE cdc_checkpoints SET position = '{json.dumps(checkpoint)}'")
    assert "0 changes applied" in run(ws)
    ws.sql(ws.source, "INSERT INTO products VALUES ('A-9', 'Pinnekjøtt', '199.00', '2024-05-01T10:00:20Z', 0)")
    assert "1 changes applied" in run(ws)
    assert ws.rows(ws.target, "products") == ws.rows(ws.source, "products")


def newest_wins_soft_delete_pair(ws, rows: int) -> None:
    """A newest_wins pair over acct (changed_at, deleted as soft_delete) whose ``rows`` rows (amount
    10, 20, ...; stamped 2026-01-01 00:00) are copied."""
    values = ", ".join(f"({i}, {10 * i}, '2026-01-01 00:00:00')" for i in range(1, rows + 1))
    ws.sql(ws.source, "CREATE TABLE acct (id INTEGER PRIMARY KEY, amount NUMERIC(12,2) NOT NULL, "
                      "changed_at DATETIME NOT NULL, deleted INTEGER NOT NULL DEFAULT 0);"
                      f"INSERT INTO acct (id, amount, changed_at) VALUES {values}")
    ws.write_config("""
        source: src
        target: dst
        capture: timestamp
        tables: [acct]
        conflict: {newest_wins: changed_at}
        timestamp: {column: changed_at, soft_delete: deleted, overlap_seconds: 30}
    """)
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    run(ws)


def test_newest_wins_weighs_a_soft_delete_by_its_own_time(ws):
    """Capture timestamp gives a soft delete no commit time: its time is the deleted row's own stamp.
    It was compared as NULL, so a delete newer than a person's edit lost ('... > None: kept')."""
    newest_wins_soft_delete_pair(ws, 3)
    # A person corrects rows 1 and 2 in the ledger, stamping them 06:00.
    ws.sql(ws.target, "UPDATE acct SET amount = 99, changed_at = '2026-01-01 06:00:00' WHERE id IN (1, 2)")
    # The source deletes row 1 later than the correction (07:00), row 2 before it (05:00).
    ws.sql(ws.source, "UPDATE acct SET deleted = 1, changed_at = '2026-01-01 07:00:00' WHERE id = 1;"
                      "UPDATE acct SET deleted = 1, changed_at = '2026-01-01 05:00:00' WHERE id = 2")
    run(ws)
    assert [row[0] for row in ws.query(ws.target, "SELECT id FROM acct ORDER BY id")] == [2, 3]
    details = dict(ws.query(ws.target, "SELECT key, detail FROM cdc_audit_log WHERE decision = 'conflict' "
                                       "ORDER BY id"))
    assert "as new or newer (2026-01-01 07:00:00 >= 2026-01-01 06:00:00): applied" in details["[1]"], details
    assert "the target row is newer (2026-01-01 06:00:00 > 2026-01-01 05:00:00): kept" in details["[2]"], details
    assert "None" not in "".join(details.values())


def test_a_soft_deleted_row_is_not_copied_not_counted_and_a_repair_deletes_it(ws):
    """With soft_delete, a row whose flag is set is deleted: the copy left it in the target, reconcile
    called that EQUAL, and a repair put a soft-deleted row back into the target."""
    ws.sql(ws.source, SCHEMA + "INSERT INTO products VALUES ('A-3', 'Gone', '1.00', '2024-05-01 10:00:00', 1);")
    ws.write_config("""
        source: src
        target: dst
        capture: timestamp
        tables: [products]
        timestamp: {column: updated_at, soft_delete: deleted, overlap_seconds: 30}
    """)
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    run(ws)
    assert [r[0] for r in ws.query(ws.target, "SELECT sku FROM products ORDER BY sku")] == ["A-1", "A-2"]
    assert ws.cdc("reconcile", str(ws.config), "--settle", "0").returncode == 0
    # A person (or an old copy) puts the soft-deleted row into the target: reconcile finds it, a repair deletes it.
    ws.sql(ws.target, "INSERT INTO products VALUES ('A-3', 'Gone', '1.00', '2024-05-01 10:00:00', 1)")
    found = ws.cdc("reconcile", str(ws.config), "--settle", "0")
    assert found.returncode == 1 and "soft-deleted (deleted set)" in found.stdout, found.stdout
    repaired = ws.cdc("reconcile", str(ws.config), "--settle", "0", "--repair")
    assert "1 delete(s)" in repaired.stdout, repaired.stdout
    assert [r[0] for r in ws.query(ws.target, "SELECT sku FROM products ORDER BY sku")] == ["A-1", "A-2"]
    # Deleting and undeleting still stream.
    ws.sql(ws.source, "UPDATE products SET deleted = 1, updated_at = '2024-05-01 11:00:00' WHERE sku = 'A-1';"
                      "UPDATE products SET deleted = 0, updated_at = '2024-05-01 11:00:00' WHERE sku = 'A-3'")
    run(ws)
    assert [r[0] for r in ws.query(ws.target, "SELECT sku FROM products ORDER BY sku")] == ["A-2", "A-3"]
    assert ws.cdc("reconcile", str(ws.config), "--settle", "0").returncode == 0


def test_a_repair_weighs_a_soft_deleted_rows_own_stamp_under_newest_wins(ws):
    """A row the source soft-deleted at 07:00, entered again by a person at 08:00: a repair under
    newest_wins keeps the person's newer row (it weighed the delete by the time the repair ran)."""
    newest_wins_soft_delete_pair(ws, 2)
    ws.sql(ws.source, "UPDATE acct SET deleted = 1, changed_at = '2026-01-01 07:00:00' WHERE id IN (1, 2)")
    run(ws)
    assert ws.query(ws.target, "SELECT count(*) FROM acct") == [(0,)]
    ws.sql(ws.target, "INSERT INTO acct VALUES (1, 11, '2026-01-01 08:00:00', 0), (2, 22, '2026-01-01 06:00:00', 0)")
    ws.cdc("reconcile", str(ws.config), "--settle", "0", "--repair")
    assert ws.query(ws.target, "SELECT id FROM acct ORDER BY id") == [(1,)]  # the newer one kept, the older deleted


def test_a_soft_delete_leaves_the_target_though_the_mapping_filters_on_the_soft_delete_column(ws):
    """A filter `deleted = 0` beside soft_delete: deleted. The soft delete's image carries deleted = 1,
    which the filter refused: the row stayed in the target, with no audit row, and the run said
    "1 changes applied"; only reconcile found it."""
    ws.sql(ws.source, SCHEMA)
    (ws.config.parent / "map.yaml").write_text('tables:\n  products:\n    filter: [{column: deleted, op: "=", value: 0}]\n',
                                               encoding="utf-8")
    ws.write_config("""
        source: src
        target: dst
        capture: timestamp
        mapping: map.yaml
        timestamp: {column: updated_at, soft_delete: deleted, overlap_seconds: 30}
    """)
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0, ws.cdc(command, str(ws.config)).stderr
    run(ws)
    ws.sql(ws.source, "UPDATE products SET deleted = 1, updated_at = '2024-05-01 11:00:00' WHERE sku = 'A-1'")
    run(ws)
    assert [r[0] for r in ws.query(ws.target, "SELECT sku FROM products ORDER BY sku")] == ["A-2"]
    assert ws.query(ws.target, "SELECT op FROM cdc_audit_log WHERE op <> 'snapshot'") == [("delete",)]
    assert ws.cdc("reconcile", str(ws.config), "--settle", "0").returncode == 0
