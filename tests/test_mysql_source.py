"""MySQL/MariaDB as a source (capture `binlog`) and as a target: MariaDB <-> PostgreSQL, MariaDB -> MariaDB."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import psycopg
import pymysql
import sqlalchemy as sa

UTC = dt.timezone.utc


def mexec(url: str, statement: str, params=None, many: bool = False) -> list:
    """Run SQL on MariaDB (autocommit); the rows it returns."""
    parts = sa.engine.make_url(url)
    with pymysql.connect(host=parts.host, port=parts.port, user=parts.username, password=parts.password or "",
                         database=parts.database, autocommit=True, charset="utf8mb4") as conn:
        with conn.cursor() as cursor:
            cursor.execute("SET time_zone = '+00:00'")
            if many:
                cursor.executemany(statement, params)
            else:
                for single in ([statement] if params is not None else statement.split(";\n")):
                    if single.strip():
                        cursor.execute(single, params)
            return list(cursor.fetchall()) if cursor.description else []


def pexec(url: str, statement: str, params=None) -> list:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def pair_config(ws, source: str, target: str, name: str, capture: str = "binlog", tables: str = "[entries]",
                extra: str = "", **options) -> None:
    more = "".join(f"    {k}: {v}\n" for k, v in options.items())
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  {name}:\n    source: src\n"
                         f"    target: dst\n    capture: {capture}\n    tables: {tables}\n{more}{extra}",
                         encoding="utf-8")


def cdc_ok(ws, *args):
    result = ws.cdc(*args, str(ws.config))
    assert result.returncode == 0, result.stdout + result.stderr
    return result


ENTRIES = """CREATE TABLE entries (id BIGINT PRIMARY KEY, account INT NOT NULL, amount DECIMAL(18,2) NOT NULL,
    currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at DATETIME(6)) ENGINE=InnoDB"""


def test_mariadb_to_postgresql_snapshot_and_binlog(ws, mysql_url, pg_url):
    mexec(mysql_url, ENTRIES)
    mexec(mysql_url, "INSERT INTO entries VALUES (%s, %s, %s, %s, %s, %s)", [
        (1, 1500, Decimal("1234567890123.45"), "NOK", "Blåbærsyltetøy ☕", dt.datetime(2024, 3, 31, 23, 30)),
        (2, 1920, Decimal("-0.01"), "NOK", None, None)], many=True)
    pair_config(ws, mysql_url, pg_url, "shop", source_timezone="Europe/Oslo")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    assert "1 changes" not in cdc_ok(ws, "run", "--once").stdout  # the snapshot
    mexec(mysql_url, "INSERT INTO entries VALUES (3, 2700, 0.10, 'EUR', 'Ærlig 🧾', '2024-07-01 12:00:00')")
    mexec(mysql_url, "UPDATE entries SET amount = amount + 1, memo = 'endret' WHERE id = 1")
    mexec(mysql_url, "DELETE FROM entries WHERE id = 2")
    result = cdc_ok(ws, "run", "--once")
    assert "3 changes applied" in result.stdout, result.stdout
    assert pexec(pg_url, "SELECT id, account, amount, currency, memo, booked_at FROM entries ORDER BY id") == [
        (1, 1500, Decimal("1234567890124.45"), "NOK", "endret",
         dt.datetime(2024, 3, 31, 21, 30, tzinfo=UTC)),  # 23:30 in Oslo (summer time) is 21:30 UTC
        (3, 2700, Decimal("0.10"), "EUR", "Ærlig 🧾", dt.datetime(2024, 7, 1, 10, 0, tzinfo=UTC))]
    audit = pexec(pg_url, "SELECT op, key, source_txid FROM cdc_audit_log WHERE op <> 'snapshot' ORDER BY id")
    assert [(op, key) for op, key, _ in audit] == [("insert", "[3]"), ("update", "[1]"), ("delete", "[2]")]
    assert len({txid for _, _, txid in audit}) == 3  # each change its own transaction (GTID)
    # Nothing pending: another run applies nothing and keeps the checkpoint.
    assert "0 changes applied" in cdc_ok(ws, "run", "--once").stdout


def test_types_between_mariadb_and_postgresql(ws, mysql_databases, pg_databases):
    """Every type the issue names, MariaDB -> PostgreSQL and back (PostgreSQL -> MariaDB)."""
    source, middle, back = mysql_databases(), pg_databases(), mysql_databases()
    mexec(source, """CREATE TABLE things (id INT PRIMARY KEY, price DECIMAL(30,10) NOT NULL, active TINYINT(1),
        big BIGINT UNSIGNED, local_at DATETIME, stamp TIMESTAMP NULL, day DATE, note TEXT, doc JSON, raw BLOB,
        state ENUM('open','paid','void'), tags SET('a','b','c')) ENGINE=InnoDB""")
    row = (1, Decimal("12345678901234567890.0123456789"), 1, 2**63 + 5, dt.datetime(2024, 1, 31, 8, 0),
           dt.datetime(2024, 6, 1, 12, 0, 0), dt.date(2024, 2, 29), "æøå ÆØÅ 🧾☕", '{"konto": 1500, "tekst": "Blåbær"}',
           b"\x00\xff\x10", "paid", "c,a")
    mexec(source, "INSERT INTO things VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
    (ws.config.parent / "things.yaml").write_text(
        "tables:\n  things:\n    columns:\n      id: id\n      price: price\n"
        "      active: {from: active, transforms: [boolean]}\n      big: big\n      local_at: local_at\n"
        "      stamp: stamp\n      day: day\n      note: note\n      doc: doc\n      raw: raw\n"
        "      state: state\n      tags: tags\n", encoding="utf-8")
    ws.config.write_text(f"connections:\n  src: {source}\n  mid: {middle}\n  back: {back}\npairs:\n"
                         f"  there:\n    source: src\n    target: mid\n    capture: binlog\n    mapping: things.yaml\n"
                         f"  home:\n    source: mid\n    target: back\n    capture: logical\n    tables: [things]\n",
                         encoding="utf-8")
    pexec(middle, "CREATE TABLE things (id INT PRIMARY KEY, price NUMERIC(30,10) NOT NULL, active BOOLEAN, "
                  "big NUMERIC(20,0), local_at TIMESTAMPTZ, stamp TIMESTAMPTZ, day DATE, note TEXT, doc JSONB, "
                  "raw BYTEA, state TEXT, tags TEXT)")
    mexec(back, """CREATE TABLE things (id INT PRIMARY KEY, price DECIMAL(30,10) NOT NULL, active BOOLEAN,
        big BIGINT UNSIGNED, local_at DATETIME, stamp TIMESTAMP NULL, day DATE, note TEXT, doc JSON, raw BLOB,
        state ENUM('open','paid','void'), tags SET('a','b','c')) ENGINE=InnoDB""")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once", "--pair", "there")
    mexec(source, "UPDATE things SET note = CONCAT(note, ' 🎉'), price = price + 1 WHERE id = 1")
    mexec(source, "INSERT INTO things VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
          (2, Decimal("-0.0000000001"), 0, 0, None, None, None, "", '[1, 2.5, "x"]', b"", "void", ""))
    cdc_ok(ws, "run", "--once", "--pair", "there")
    got = pexec(middle, "SELECT * FROM things ORDER BY id")
    assert got[0] == (1, Decimal("12345678901234567891.0123456789"), True, Decimal(2**63 + 5),
                      dt.datetime(2024, 1, 31, 8, 0, tzinfo=UTC), dt.datetime(2024, 6, 1, 12, 0, tzinfo=UTC),
                      dt.date(2024, 2, 29), "æøå ÆØÅ 🧾☕ 🎉", {"konto": 1500, "tekst": "Blåbær"}, b"\x00\xff\x10",
                      "paid", "a,c")
    assert got[1] == (2, Decimal("-0.0000000001"), False, Decimal(0), None, None, None, "", [1, 2.5, "x"], b"",
                      "void", "")
    cdc_ok(ws, "run", "--once", "--pair", "home")
    assert mexec(back, "SELECT * FROM things ORDER BY id") == mexec(source, "SELECT * FROM things ORDER BY id")


def test_mysql_target_upserts_audit_and_checkpoint_in_one_transaction(ws, pg_url, mysql_url):
    """PostgreSQL -> MariaDB: rows, audit and checkpoint land together; a too-long value is parked alone."""
    pexec(pg_url, "CREATE TABLE entries (id BIGINT PRIMARY KEY, account INT NOT NULL, amount NUMERIC(18,2) NOT NULL, "
                  "currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at TIMESTAMPTZ)")
    mexec(mysql_url, ENTRIES.replace("VARCHAR(200)", "VARCHAR(10)"))
    pair_config(ws, pg_url, mysql_url, "ledger", capture="logical", on_error="park")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    cdc_ok(ws, "run", "--once")
    pexec(pg_url, "INSERT INTO entries SELECT g, 1500, g / 100.0, 'NOK', 'kort', timestamptz '2024-01-01 00:00+01' "
                  "FROM generate_series(1, 500) g")
    pexec(pg_url, "UPDATE entries SET memo = 'altfor lang tekst' WHERE id = 7")
    result = cdc_ok(ws, "run", "--once")
    assert "1 parked" in result.stdout, result.stdout
    assert mexec(mysql_url, "SELECT count(*), sum(amount) FROM entries") == [(500, Decimal("1252.50"))]
    assert mexec(mysql_url, "SELECT memo, booked_at FROM entries WHERE id = 7") == [("kort", dt.datetime(2023, 12, 31, 23, 0))]
    assert mexec(mysql_url, "SELECT error, column_name FROM cdc_dead_letters") == [
        ("text of 17 characters does not fit 10; refusing to truncate", "memo")]
    assert mexec(mysql_url, "SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'") == [(500,)]
