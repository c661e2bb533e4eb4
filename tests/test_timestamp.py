"""Capture `timestamp` on SQLite: watermark (updated_at, key), an overlap window, soft deletes."""

from __future__ import annotations

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


def test_soft_delete_deletes_in_the_target(ws):
    timestamp_pair(ws)
    ws.sql(ws.source, "UPDATE products SET deleted = 1, updated_at = '2024-05-02 08:00:00' WHERE sku = 'A-2'")
    run(ws)
    assert [r[0] for r in ws.rows(ws.target, "products")] == ["A-1"]
    assert ws.query(ws.target, "SELECT op, key FROM cdc_audit_log WHERE op != 'snapshot'") == [("delete", '["A-2"]')]


def test_missing_timestamp_column_is_a_clear_error(ws):
    ws.sql(ws.source, "CREATE TABLE products (sku TEXT PRIMARY KEY, changed TEXT)")
    ws.write_config("source: src\ntarget: dst\ncapture: timestamp\ntables: [products]\ntimestamp: {column: updated_at}")
    result = ws.cdc("install", str(ws.config))
    assert result.returncode == 1 and "source table products has no timestamp column 'updated_at'" in result.stderr
