"""Rows too large for a MariaDB target: parked by name (or the pair stops), never retried for ever;
their dead letters and audit rows always fit; runs of rows go in statements under the limit."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import sqlite3

import pymysql
import pytest
import sqlalchemy as sa
from test_mysql_source import mexec

MIB = 2**20
TEN_MB = 10_000_000


@pytest.fixture
def packet(mysql_server):
    """A function that sets the test server's max_allowed_packet (new connections take it); the
    value it had is restored afterwards."""
    url = sa.engine.make_url(mysql_server[0])

    def run(statement: str):
        with pymysql.connect(host=url.host, port=url.port, user=url.username, password=url.password or "",
                             autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall()

    (original,), = run("SELECT @@global.max_allowed_packet")
    yield lambda size: run(f"SET GLOBAL max_allowed_packet = {int(size)}")
    run(f"SET GLOBAL max_allowed_packet = {original}")


def _pair(ws, target: str, on_error: str = "park") -> None:
    ws.sql(ws.source, "CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, raw BLOB)")
    ws.config.write_text(f"connections:\n  src: sqlite:///source.db\n  dst: {target}\npairs:\n  p:\n"
                         f"    source: src\n    target: dst\n    capture: trigger\n    tables: [docs]\n"
                         f"    on_error: {on_error}\n", encoding="utf-8")
    for command in ("init", "install"):
        result = ws.cdc(command, str(ws.config))
        assert result.returncode == 0, result.stdout + result.stderr


def _insert(ws, rows: list[tuple]) -> None:
    """Rows inserted in ONE source transaction (one batch)."""
    conn = sqlite3.connect(ws.source)
    with conn:
        conn.executemany("INSERT INTO docs VALUES (?, ?, ?)", rows)
    conn.close()


def _run(ws, timeout: float = 120):
    return ws.cdc("run", "--once", str(ws.config), timeout=timeout)


def _letters(url: str) -> list[tuple]:
    return [(json.loads(key), error, column, json.loads(change)) for key, error, column, change in
            mexec(url, "SELECT `key`, error, column_name, `change` FROM cdc_dead_letters ORDER BY id")]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_10mb_text_is_applied_and_a_10mb_blob_parked_while_the_batch_goes_on(ws, mysql_url, packet):
    """With max_allowed_packet 16 MiB a 10 MB text fits (LONGTEXT); a 10 MB blob is 20 MB as sent
    (hex): parked with table, key, column and limit; the rest of the batch is applied, quickly,
    in bounded memory."""
    packet(16 * MIB)
    _pair(ws, mysql_url)
    assert _run(ws).returncode == 0  # the (empty) snapshot
    text, blob = "æ" + "x" * (TEN_MB - 1), os.urandom(TEN_MB)
    _insert(ws, [(1, "small", b"\x00"), (2, text, None), (3, "blob", blob), (4, "after", b"\x01")])
    result = _run(ws)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 changes applied in 1 target transactions, 1 parked" in result.stdout, result.stdout
    assert "retrying" not in result.stderr
    got = mexec(mysql_url, "SELECT id, LENGTH(body), SHA2(body, 256), HEX(raw) FROM docs ORDER BY id")
    assert [tuple(r) for r in got] == [(1, 5, _sha(b"small"), "00"), (2, TEN_MB + 1, _sha(text.encode()), None),
                                       (4, 5, _sha(b"after"), "01")]
    ((key, error, column, change),) = _letters(mysql_url)
    assert key == [3] and column == "raw"
    assert error.startswith("row of 20,000,") and "exceeds the target's max_allowed_packet 16,777,216" in error
    assert "(raw is 20,000,0" in error and "raise max_allowed_packet on the target server" in error
    assert base64.b64decode(change["after"]["raw"]["$base64"]) == blob  # the whole change is kept
    (after,) = mexec(mysql_url, "SELECT `after` FROM cdc_audit_log WHERE `key` = '[2]'")[0]
    assert json.loads(after)["body"] == text
    # The cdc process stayed small (it reached 1.26 GB retrying this blob).
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss < 700 * 1024
    status = json.loads(ws.cdc("status", "--json", str(ws.config)).stdout)
    assert status[0]["dead_letters"] == 1


def test_with_stop_the_pair_stops_naming_table_key_column_and_limit(ws, mysql_url, packet):
    packet(16 * MIB)
    _pair(ws, mysql_url, on_error="stop")
    assert _run(ws).returncode == 0
    _insert(ws, [(1, "small", None), (2, "blob", os.urandom(TEN_MB)), (3, "after", None)])
    for _ in range(2):  # stops again, at once, on the next run: never a retry loop
        result = _run(ws, timeout=90)
        assert result.returncode == 1 and "Traceback" not in result.stderr and "retrying" not in result.stderr
        assert "table docs key [2] column raw: row of 20,000," in result.stderr, result.stderr
        assert "exceeds the target's max_allowed_packet 16,777,216" in result.stderr
    assert mexec(mysql_url, "SELECT count(*) FROM docs")[0][0] == 0  # nothing of the batch
    assert mexec(mysql_url, "SELECT count(*) FROM cdc_dead_letters")[0][0] == 0


def test_below_the_size_of_a_change_its_dead_letter_and_audit_row_still_fit(ws, mysql_url, packet):
    """max_allowed_packet 4 MiB: a 10 MB text is parked, and its dead letter keeps the value's
    length and SHA-256 with a note; a 3 MB text is applied, and the audit row of its update
    (before and after: 6 MB) keeps the images' largest values as length and SHA-256."""
    packet(4 * MIB)
    _pair(ws, mysql_url)
    assert _run(ws).returncode == 0
    big, three = "y" * TEN_MB, "z" * 3_000_000
    _insert(ws, [(1, big, None), (2, three, None), (3, "small", None)])
    result = _run(ws)
    assert result.returncode == 0 and "2 changes applied" in result.stdout and "1 parked" in result.stdout, \
        result.stdout + result.stderr
    ((key, error, column, change),) = _letters(mysql_url)
    assert key == [1] and column == "body" and "exceeds the target's max_allowed_packet 4,194,304" in error
    assert "the values of body are kept as their length and SHA-256 only; read them from the source" in error
    assert change["omitted"] == ["body"]
    assert change["after"] == {"id": 1, "raw": None,
                               "body": {"$omitted": {"bytes": TEN_MB, "sha256": _sha(big.encode())}}}
    conn = sqlite3.connect(ws.source)
    with conn:
        conn.execute("UPDATE docs SET body = body || '!' WHERE id = 2")
    conn.close()
    result = _run(ws)
    assert result.returncode == 0 and "1 changes applied" in result.stdout, result.stdout + result.stderr
    assert mexec(mysql_url, "SELECT LENGTH(body) FROM docs WHERE id = 2")[0][0] == 3_000_001
    before, after = mexec(mysql_url, "SELECT `before`, `after` FROM cdc_audit_log WHERE op = 'update'")[0]
    before, after = json.loads(before), json.loads(after)
    # The larger value (the after image's) is kept as length and SHA-256; then the row fits.
    assert after["body"] == {"$omitted": {"bytes": 3_000_001, "sha256": _sha((three + "!").encode())}}
    assert before["body"] == three and after["id"] == 2


def test_many_mid_size_rows_go_in_statements_under_a_small_packet(ws, mysql_url, packet):
    """max_allowed_packet 512 KiB, below the 1,000,000-byte INSERTs PyMySQL joins rows into: a
    snapshot and a transaction of 40 rows of 60 KB each are applied in statements that fit."""
    packet(512 * 1024)
    _pair(ws, mysql_url)
    _insert(ws, [(i, f"{i:03d}" + "s" * 60_000, os.urandom(20_000)) for i in range(1, 41)])
    result = _run(ws, timeout=90)
    assert result.returncode == 0 and "snapshot 40 rows" in result.stdout, result.stdout + result.stderr
    conn = sqlite3.connect(ws.source)
    with conn:
        conn.execute("UPDATE docs SET body = body || 'u'")
    conn.close()
    result = _run(ws, timeout=90)
    assert result.returncode == 0 and "40 changes applied" in result.stdout, result.stdout + result.stderr
    assert "parked" not in result.stdout
    assert mexec(mysql_url, "SELECT count(*), min(LENGTH(body)), max(LENGTH(body)) FROM docs")[0] == \
        (40, 60_004, 60_004)
    assert mexec(mysql_url, "SELECT count(*) FROM cdc_audit_log WHERE op = 'update'")[0][0] == 40


def test_doctor_reports_max_allowed_packet(ws, mysql_url, packet):
    _pair(ws, mysql_url)
    packet(16 * MIB)
    out = ws.cdc("doctor", str(ws.config)).stdout
    assert "[WARN] target max_allowed_packet = 16,777,216 bytes (16 MiB): a row larger than that" in out, out
    assert "SET GLOBAL max_allowed_packet = 268435456" in out
    packet(256 * MIB)
    assert "[  OK] target max_allowed_packet = 268,435,456 bytes (256 MiB)" in ws.cdc("doctor", str(ws.config)).stdout
