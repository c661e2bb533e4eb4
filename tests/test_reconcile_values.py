"""Reconcile fingerprints every value a pair copies: DECIMAL(65,30), a REAL of 1e308, doubles at the
edges of their range; a value it cannot read is named by table, key and column, never a traceback."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from test_reconcile import cdc_ok, database, run_sql  # noqa: F401 - database is a fixture

CAPTURE = {"sqlite": "trigger", "postgresql": "logical", "mariadb": "binlog"}
WIDE = [Decimal("12345678901234567890123456789012345.123456789012345678901234567890"),
        Decimal("-99999999999999999999999999999999999.999999999999999999999999999999"),
        Decimal("0.000000000000000000000000000001"), Decimal(0)]


def pair_config(ws, source: str, target: str, capture: str, table: str, mapping: str | None = None) -> str:
    tables = f"tables: [{table}]"
    if mapping is not None:
        (ws.root / "map.yaml").write_text(mapping, encoding="utf-8")
        tables = "mapping: map.yaml"
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  p:\n    source: src\n"
                         f"    target: dst\n    capture: {capture}\n    {tables}\n", encoding="utf-8")
    for command in ("init", "install"):
        cdc_ok(ws, command, str(ws.config))
    cdc_ok(ws, "run", "--once", str(ws.config))
    return str(ws.config)


def reconciled(ws, config: str, *args: str) -> tuple[int, dict]:
    result = ws.cdc("reconcile", config, "--settle", "0", "--format", "json", *args)
    assert "Traceback" not in result.stderr and result.returncode in (0, 1), result.stdout + result.stderr
    return result.returncode, json.loads(result.stdout)


def differences(report: dict) -> list[tuple]:
    return [(r["kind"], r["key"], sorted(r["columns"])) for t in report["tables"] for r in t["rows"]]


@pytest.mark.parametrize("mapping", [None, "tables:\n  wide:\n    columns: {id: id, amount: amount, "
                                           "note: {from: note, transforms: [trim]}}\n"])
def test_decimal_65_30_from_mariadb_to_postgresql(ws, database, mapping):
    """DECIMAL(65,30) gave a decimal.InvalidOperation traceback (Python's 28 digits) wherever Python made
    a value canonical: a differing row, or a mapping that transforms (the source then streamed)."""
    source, _ = database("mariadb")
    target, _ = database("postgresql")
    run_sql(source, "CREATE TABLE wide (id INT PRIMARY KEY, amount DECIMAL(65,30) NOT NULL, note VARCHAR(20)) "
                    "ENGINE=InnoDB")
    for i, amount in enumerate(WIDE, start=1):
        run_sql(source, "INSERT INTO wide VALUES (:i, :a, :n)", i=i, a=str(amount), n=f" bilag {i} ")
    config = pair_config(ws, source, target, "binlog", "wide", mapping)
    code, report = reconciled(ws, config)
    assert code == 0 and report["tables"][0]["source_rows"] == len(WIDE), report["tables"]
    run_sql(target, "UPDATE wide SET amount = amount + 0.000000000000000000000000000001 WHERE id = 1")
    run_sql(target, "DELETE FROM wide WHERE id = 2")
    code, report = reconciled(ws, config)
    assert code == 1 and differences(report) == [("different", [1], ["amount"]), ("missing", [2], [])]
    columns = report["tables"][0]["rows"][0]["columns"]["amount"]
    assert Decimal(columns["source"]) == WIDE[0] and Decimal(columns["target"]) - WIDE[0] == Decimal("1E-30")
    assert "repair applied 2 upsert(s) and 0 delete(s)" in ws.cdc("reconcile", config, "--settle", "0", "--repair").stdout
    assert reconciled(ws, config)[0] == 0
    rows = run_sql(target, "SELECT id, amount, note FROM wide ORDER BY id")
    wanted = [(i, amount, f" bilag {i} " if mapping is None else f"bilag {i}") for i, amount in enumerate(WIDE, 1)]
    assert [(i, Decimal(a), n) for i, a, n in rows] == wanted


@pytest.mark.parametrize("target_kind", ["sqlite", "postgresql"])
def test_huge_reals_from_sqlite(ws, database, target_kind):
    """A REAL of 1e308 in a NUMERIC (or REAL) column gave "user-defined function raised exception" with
    no table or row: the canonical text quantized it with 28 digits inside SQLite's function."""
    source, source_db = database("sqlite")
    target, _ = database(target_kind)
    run_sql(source, "CREATE TABLE m (id INTEGER PRIMARY KEY, r REAL, n NUMERIC, d DOUBLE PRECISION)")
    run_sql(source, "INSERT INTO m VALUES (1, 1e308, 1e308, -1e308), (2, 1.5, 2, 5e-324), (3, -2.5e-308, 0, 1e300)")
    config = pair_config(ws, source, target, "trigger", "m")
    code, report = reconciled(ws, config)
    assert code == 0 and report["tables"][0]["target_rows"] == 3, report
    run_sql(target, "UPDATE m SET d = 1e299 WHERE id = 3")
    code, report = reconciled(ws, config)
    assert code == 1 and differences(report) == [("different", [3], ["d"])], report
    assert "repair applied 1 upsert(s)" in ws.cdc("reconcile", config, "--settle", "0", "--repair").stdout
    assert reconciled(ws, config)[0] == 0
    held = [(i, float(r), Decimal(str(n)), float(d)) for i, r, n, d in run_sql(target, "SELECT * FROM m ORDER BY id")]
    assert held == [(1, 1e308, Decimal("1E+308"), -1e308), (2, 1.5, Decimal(2), 5e-324), (3, -2.5e-308, 0, 1e300)]


def test_huge_doubles_and_numerics_from_postgresql(ws, database):
    source, _ = database("postgresql")
    target, _ = database("sqlite")
    run_sql(source, "CREATE TABLE m (id INT PRIMARY KEY, d DOUBLE PRECISION, n NUMERIC)")
    run_sql(source, "INSERT INTO m VALUES (1, 1e308, 1e308), (2, 'Infinity', 0.5), (3, -1.7976931348623157e308, 7)")
    config = pair_config(ws, source, target, "logical", "m")
    code, report = reconciled(ws, config)
    assert code == 0 and report["tables"][0]["target_rows"] == 3, report


def test_a_value_that_cannot_be_read_is_named(ws, database):
    """A text in a SQLite NUMERIC column cannot be read as a number: the error names table, key and column."""
    source, _ = database("sqlite")
    target, _ = database("sqlite")
    run_sql(source, "CREATE TABLE m (id INTEGER PRIMARY KEY, n NUMERIC(12,2), note TEXT)")
    run_sql(source, "INSERT INTO m VALUES (1, 1.50, 'a'), (2, 2.50, 'b'), (3, 3.50, 'c')")
    config = pair_config(ws, source, target, "trigger", "m")
    run_sql(target, "UPDATE m SET n = 'abc' WHERE id = 2")
    result = ws.cdc("reconcile", config, "--settle", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "table m key [2] column n: cannot read the stored value 'abc'" in result.stderr, result.stderr
