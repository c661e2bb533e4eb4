"""`cdc reconcile --repair` never deletes what the source has, and its reads cannot write.

Each repair test checks the target row by row against the source afterwards.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import sqlalchemy as sa

from test_reconcile import cdc_ok, database, engine, run_sql  # noqa: F401 - database is a fixture

CAPTURE = {"sqlite": "trigger", "postgresql": "logical", "mariadb": "binlog"}
PEOPLE = {
    "sqlite": "CREATE TABLE people (id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL, status VARCHAR(10) NOT NULL, "
              "amount NUMERIC(12,3) NOT NULL, email VARCHAR(40))",
    "postgresql": "CREATE TABLE people (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, status VARCHAR(10) NOT NULL, "
                  "amount NUMERIC(12,3) NOT NULL, email VARCHAR(40))",
    "mariadb": "CREATE TABLE people (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL, status VARCHAR(10) NOT NULL, "
               "amount DECIMAL(12,3) NOT NULL, email VARCHAR(40)) ENGINE=InnoDB",
}
UPPER = ("tables:\n  people:\n    columns: {id: id, name: {from: name, transforms: [upper]}, status: status, "
         "amount: {from: amount, transforms: [{decimal: 2}]}}\n")
IDENTITY = "tables:\n  people: {}\n"
POSTED = UPPER + "    filter: [{column: status, op: '!=', value: draft}]\n"
RANDOM = {"sqlite": "abs(random()) % 2 = 0", "postgresql": "random() < 0.5", "mariadb": "RAND() < 0.5"}


def people_pair(ws, database, source_kind: str, target_kind: str, rows: int, mapping: str) -> tuple[str, str]:
    """people(id, name, status, amount) at the source, every third one named alice, synced once."""
    source, _ = database(source_kind)
    target, _ = database(target_kind)
    run_sql(source, PEOPLE[source_kind])
    for start in range(1, rows + 1, 500):
        values = ", ".join(f"({i}, '{'alice' if i % 3 == 0 else f'bob {i}'}', 'posted', {i}.25, 'p{i}@example.no')"
                           for i in range(start, min(start + 500, rows + 1)))
        run_sql(source, f"INSERT INTO people (id, name, status, amount, email) VALUES {values}")
    (ws.root / "people.yaml").write_text(mapping, encoding="utf-8")
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  people:\n    source: src\n"
                         f"    target: dst\n    capture: {CAPTURE[source_kind]}\n    mapping: people.yaml\n",
                         encoding="utf-8")
    for command in ("init", "install"):
        cdc_ok(ws, command, str(ws.config))
    cdc_ok(ws, "run", "--once", str(ws.config))
    return source, target


def expected(source: str, *, keep: dict | None = None, upper: bool = True) -> dict[int, tuple]:
    """The source's people as the mapping makes them (name upper-cased, drafts left out), plus ``keep``."""
    rows = {int(i): (name.upper() if upper else name, status, Decimal(str(amount)).quantize(Decimal("0.01")))
            for i, name, status, amount in run_sql(source, "SELECT id, name, status, amount FROM people")
            if status != "draft"}
    return {**rows, **(keep or {})}


def held(target: str) -> dict[int, tuple]:
    """The target's people, row by row."""
    return {int(i): (name, status, Decimal(str(amount)).quantize(Decimal("0.01")))
            for i, name, status, amount in run_sql(target, "SELECT id, name, status, amount FROM people")}


@pytest.mark.parametrize("source_kind, target_kind", [("sqlite", "sqlite"), ("postgresql", "mariadb"),
                                                      ("mariadb", "postgresql")])
def test_a_where_on_a_transformed_column_is_refused_and_deletes_nothing(ws, database, source_kind, target_kind):
    """`name = 'ALICE'` selects nothing at the source (alice) and 33 rows in the target (ALICE): a repair
    deleted those 33 rows. It is refused now, naming the column and the transform."""
    source, target = people_pair(ws, database, source_kind, target_kind, 100, UPPER)
    before = held(target)
    assert before == expected(source) and sum(name == "ALICE" for name, _, _ in before.values()) == 33
    result = ws.cdc("reconcile", str(ws.config), "--settle", "0", "--where", "name = 'ALICE'", "--repair")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "names column 'name', which the mapping transforms (upper)" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    renamed = ws.cdc("reconcile", str(ws.config), "--settle", "0", "--where", "\"NAME\" LIKE 'a%'")
    assert renamed.returncode == 2 and "'name'" in renamed.stderr, renamed.stderr  # quoted, any case
    assert held(target) == before == expected(source)
    # A column copied as it is may be named: only the rows it selects are compared (and equal).
    fine = ws.cdc("reconcile", str(ws.config), "--settle", "0", "--where", "id <= 10 AND status = 'posted'",
                  "--format", "json")
    assert fine.returncode == 0, fine.stdout + fine.stderr
    assert json.loads(fine.stdout)["tables"][0]["source_rows"] == 10


@pytest.mark.parametrize("kind, mapping", [("sqlite", UPPER), ("postgresql", UPPER), ("mariadb", UPPER),
                                           ("sqlite", IDENTITY), ("postgresql", IDENTITY)])
def test_a_random_where_repairs_nothing(ws, database, kind, mapping):
    """A non-deterministic --where picks different rows on each side: a repair deleted 474 of 1,999
    rows. Each key one side picked is read on the other by key: equal, nothing to repair (whether
    the source is fingerprinted in Python, through the transforms, or in the database)."""
    source, target = people_pair(ws, database, kind, kind, 1999, mapping)
    result = ws.cdc("reconcile", str(ws.config), "--settle", "0", "--where", RANDOM[kind], "--repair", "--format",
                    "json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["equal"] and report["repair"] is None, report["tables"]
    assert held(target) == expected(source, upper=mapping is UPPER) and len(held(target)) == 1999


@pytest.mark.parametrize("source_kind, target_kind", [("sqlite", "sqlite"), ("postgresql", "mariadb"),
                                                      ("mariadb", "postgresql")])
def test_repair_deletes_only_keys_the_source_has_no_row_for(ws, database, source_kind, target_kind):
    """Extra target rows: one the source never had (deleted), one the source now has as a draft that the
    mapping's filter leaves out, one the source has with an amount the mapping cannot map (both kept and
    listed: the source has their key). The dry-run plan shows the source row of each upsert."""
    source, target = people_pair(ws, database, source_kind, target_kind, 60, POSTED)
    run_sql(target, "INSERT INTO people (id, name, status, amount) VALUES (9999, 'GHOST', 'posted', 1.00)")
    run_sql(target, "DELETE FROM people WHERE id = 7")
    run_sql(target, "UPDATE people SET amount = 0 WHERE id = 8")
    run_sql(source, "UPDATE people SET status = 'draft' WHERE id = 10")  # the pair has not run since
    run_sql(source, "UPDATE people SET amount = 11.125 WHERE id = 11")  # 3 decimals: {decimal: 2} refuses it
    kept = {i: row for i, row in held(target).items() if i in (10, 11)}

    plan = ws.cdc("reconcile", str(ws.config), "--settle", "0", "--repair", "--dry-run")
    assert plan.returncode == 1, plan.stdout + plan.stderr
    lines = plan.stdout.splitlines()
    assert "repair would apply 2 upsert(s) and 1 delete(s); 2 target row(s) kept (the source has their key)" in lines
    assert "    upsert people (7)  from source people (7): id=7, name=bob 7, status=posted, amount=7.250" in lines
    assert "    delete people (9999)  the source has no row with this key" in lines
    assert any(line.startswith("    keep   people (10)  the source has this key (the mapping's filter") for line in lines)
    assert any(line.startswith("    keep   people (11)  the source has this key (") and "decimals" in line
               for line in lines), plan.stdout
    assert "cannot map source row (11)" in plan.stdout
    assert "@example.no" not in plan.stdout  # the mapping does not copy email: the plan does not show it

    repaired = ws.cdc("reconcile", str(ws.config), "--settle", "0", "--repair", "--format", "json")
    assert json.loads(repaired.stdout)["repair"]["applied"] == 3, repaired.stdout + repaired.stderr
    assert held(target) == expected(source, keep=kept)
    assert sorted(run_sql(target, "SELECT a.op, a.key FROM cdc_audit_log a WHERE a.reason = 'repair'")) == [
        ("delete", "[9999]"), ("insert", "[7]"), ("update", "[8]")]


def test_a_where_cannot_advance_a_postgresql_sequence(ws, database):
    source, target = people_pair(ws, database, "postgresql", "postgresql", 20, UPPER)
    for url in (source, target):
        run_sql(url, "CREATE SEQUENCE counter")
    result = ws.cdc("reconcile", str(ws.config), "--settle", "0", "--where", "id > nextval('counter') - 1000")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "read-only transaction" in result.stderr and "Traceback" not in result.stderr, result.stderr
    for url in (source, target):
        assert run_sql(url, "SELECT last_value, is_called FROM counter") == [(1, False)]


def test_a_where_cannot_advance_a_mariadb_sequence(ws, database):
    source, target = people_pair(ws, database, "mariadb", "mariadb", 20, UPPER)
    for url in (source, target):
        run_sql(url, "CREATE SEQUENCE counter")
    result = ws.cdc("reconcile", str(ws.config), "--settle", "0", "--where", "id > NEXTVAL(counter) - 1000")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "READ ONLY" in result.stderr.upper() and "Traceback" not in result.stderr, result.stderr
    for url in (source, target):
        assert run_sql(url, "SELECT NEXTVAL(counter)") == [(1,)]  # never taken before


def test_reconcile_reads_sqlite_through_connections_that_refuse_writes(ws, database):
    """SQLite has no SQL that writes from inside a WHERE; the connections reconcile reads through refuse
    every write (a target's connections still begin with BEGIN IMMEDIATE)."""
    from cdc import registry
    from cdc.reconcile import read_only

    source, target = people_pair(ws, database, "sqlite", "sqlite", 5, UPPER)
    reads = registry.adapter_for(target).target(target)
    try:
        read_only(reads)
        with reads.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM people")).scalar() == 5
        for statement in ("DELETE FROM people", "UPDATE people SET name = 'x'", "CREATE TABLE t (i INT)",
                          "INSERT INTO people (id, name, status, amount) VALUES (99, 'x', 'y', 1)"):
            with reads.engine.connect() as conn, pytest.raises(sa.exc.DatabaseError, match="not authorized"):
                conn.execute(sa.text(statement))
    finally:
        reads.close()
    assert held(target) == expected(source) and len(held(target)) == 5


@pytest.mark.parametrize("where, says", [
    ("1=1 --", "holds an SQL comment"), ("id > 0 /* all */", "holds an SQL comment"),
    ("id > 0; DELETE FROM entries", "holds ';'"), ("id >", "does not work on table entries"),
    ("id = 1 OR", "does not work on table entries"),
])
def test_a_malformed_or_comment_injected_where_is_one_line_and_exit_2(ledger, where, says):
    """A --where that is not one readable condition is a user mistake: exit 2, one line, nothing read
    or changed (a trailing comment used to swallow the rest of a later query: exit 1)."""
    ws = ledger
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 1500, 10.00, 'NOK', 'a', NULL)")
    cdc_ok(ws, "run", "--once", str(ws.config))
    ws.sql(ws.target, "DELETE FROM entries")
    result = ws.cdc("reconcile", str(ws.config), "--settle", "0", "--table", "entries", "--where", where, "--repair")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"error: --where {where!r} ") and says in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert ws.rows(ws.target, "entries") == []
