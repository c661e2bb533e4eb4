"""Runs of a batch's writes: fewer statements, each row's own changes still in order, and the
order kept as it came where the target has constraints that could tell the difference."""

from __future__ import annotations

import random
import sqlite3

from cdc.adapters.base import _runs


def _statements(rng: random.Random, count: int) -> list[tuple]:
    found = []
    for _ in range(count):
        table = rng.choice(["a", "b", "c"])
        op = rng.choice(["upsert", "upsert", "delete"])
        found.append((op, table, ("id",), {"id": rng.randrange(8), "v": rng.randrange(1000)} if op == "upsert"
                      else {"id": rng.randrange(8)}))
    return found


def _sequences(statements) -> dict:
    seen: dict = {}
    for op, table, _key, params in statements:
        seen.setdefault((table, params["id"]), []).append((op, params.get("v")))
    return seen


def test_runs_keep_each_rows_changes_in_order_in_fewer_statements():
    rng = random.Random(7)
    for _ in range(300):
        statements = _statements(rng, rng.randrange(1, 60))
        runs = _runs(statements)
        flat = [(op, name, key, params) for (op, name, key), part in runs for params in part]
        assert sorted(map(repr, flat)) == sorted(map(repr, statements))  # nothing lost or doubled
        assert _sequences(flat) == _sequences(statements)  # each row's changes in their order
        assert len(runs) <= len(statements)
    # An OLTP-like batch: four tables each changed once per transaction, 250 transactions.
    oltp = [("upsert", t, ("id",), {"id": n * 4 + i, "v": n}) for n in range(250) for i, t in enumerate("wxyz")]
    assert len(_runs(oltp)) == 4


def test_a_target_table_with_a_unique_index_keeps_the_order_changes_came_in(tmp_path):
    """Row 1 is deleted, then row 2 takes its unique code: written in runs, row 2's upsert would join
    the run before the delete and hit the unique index. A table with a unique index (or a foreign
    key) keeps the order the changes came in, and the batch goes through."""
    from cdc.adapters.sqlite import adapter

    db = tmp_path / "t.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE plain (id INTEGER PRIMARY KEY, code TEXT)")
        conn.execute("CREATE TABLE coded (id INTEGER PRIMARY KEY, code TEXT UNIQUE)")
        conn.execute("CREATE TABLE child (id INTEGER PRIMARY KEY, parent INTEGER REFERENCES plain(id))")
        conn.execute("INSERT INTO coded VALUES (1, 'x')")
    target = adapter.target(f"sqlite:///{db}")
    try:
        assert target.free_order(["plain"])
        assert not target.free_order(["plain", "coded"])
        assert not target.free_order(["child"])
        table = "coded"
        statements = [("upsert", table, ("id",), {"id": 5, "code": "a"}), ("delete", table, ("id",), {"id": 1}),
                      ("upsert", table, ("id",), {"id": 2, "code": "x"})]
        assert len(_runs(statements)) == 2  # what a table free of such constraints gets
        with target.engine.begin() as conn:
            target._write(conn, [(op, "coded", key, params) for op, _, key, params in statements])
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT * FROM coded ORDER BY id").fetchall() == [(2, "x"), (5, "a")]
    finally:
        target.close()
