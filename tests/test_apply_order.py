"""Runs of a batch's writes: fewer statements, each row's own changes still in order, and the
order kept as it came where the target has constraints that could tell the difference."""

from __future__ import annotations

import random
import sqlite3

from cdc.apply._writes import _runs, writes_for


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
    writes = writes_for(target)
    try:
        assert writes.free_order(["plain"])
        assert not writes.free_order(["plain", "coded"])
        assert not writes.free_order(["child"])
        table = "coded"
        statements = [("upsert", table, ("id",), {"id": 5, "code": "a"}), ("delete", table, ("id",), {"id": 1}),
                      ("upsert", table, ("id",), {"id": 2, "code": "x"})]
        assert len(_runs(statements)) == 2  # what a table free of such constraints gets
        with target.engine.begin() as conn:
            writes.write(conn, [(op, "coded", key, params) for op, _, key, params in statements])
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT * FROM coded ORDER BY id").fetchall() == [(2, "x"), (5, "a")]
    finally:
        target.close()


def test_postgresql_writes_a_short_run_as_one_statement_of_many_rows_with_every_type(pg_url):
    """A run of 2..199 rows goes as one multi-row statement: values keep their types (text that looks
    like a number, JSON, exact NUMERIC, bytes, times), a key upserted twice keeps its last image,
    composite keys and a '%' in a name work, and a run over the parameter limit is split."""
    import datetime as dt
    from decimal import Decimal

    import psycopg

    from cdc.adapters.postgres import adapter, target as pg_target

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute('CREATE TABLE "a%b" (id INT, part TEXT, amount NUMERIC(20,4), doc JSONB, raw BYTEA, '
                     "at TIMESTAMPTZ, note VARCHAR(20), PRIMARY KEY (id, part))")
        conn.execute('INSERT INTO "a%b" (id, part, amount) SELECT g, \'x\', 1 FROM generate_series(1, 10) g')
    at = dt.datetime(2024, 2, 29, 23, 59, tzinfo=dt.timezone.utc)

    def row(i, amount):
        return {"id": i, "part": "x", "amount": Decimal(amount), "doc": {"n": i, "t": "æ"}, "raw": bytes([i, 0, 255]),
                "at": at, "note": "0042"}

    target = adapter.target(pg_url)
    try:
        runs = [("upsert", [row(1, "1.0001"), row(12, "-5"), row(1, "99999999999999.9999")]),
                ("delete", [{"id": 2, "part": "x"}, {"id": 3, "part": "x"}, {"id": 2, "part": "y"}])]
        writes = []
        for op, params in runs:
            prepared = [writes_for(target).prepare(_op(op, p)) for p in params]
            writes.append((op, [p for _, _, _, p in prepared]))
        with target.engine.begin() as conn:
            for op, params in writes:
                target.write_run(conn, op, "a%b", ("id", "part"), params)
        with psycopg.connect(pg_url) as conn:
            got = conn.execute('SELECT id, amount, doc, raw, at, note FROM "a%b" WHERE id IN (1, 2, 3, 12) '
                               "ORDER BY id").fetchall()
        assert got == [(1, Decimal("99999999999999.9999"), {"n": 1, "t": "æ"}, b"\x01\x00\xff", at, "0042"),
                       (12, Decimal("-5.0000"), {"n": 12, "t": "æ"}, b"\x0c\x00\xff", at, "0042")]
        # Over the parameter limit: split into statements, every row still written.
        limit = pg_target.MAX_PARAMETERS
        pg_target.MAX_PARAMETERS = 3 * 7 - 1  # two rows of seven columns per statement
        try:
            params = [writes_for(target).prepare(_op("upsert", row(i, str(i))))[3] for i in range(20, 27)]
            with target.engine.begin() as conn:
                target.write_run(conn, "upsert", "a%b", ("id", "part"), params)
        finally:
            pg_target.MAX_PARAMETERS = limit
        with psycopg.connect(pg_url) as conn:
            assert conn.execute('SELECT array_agg(amount ORDER BY id) FROM "a%b" WHERE id >= 20').fetchone()[0] == [
                Decimal(i) for i in range(20, 27)]
    finally:
        target.engine.dispose()


def _op(op: str, params: dict):
    from cdc.mapping import TargetOp

    key = (params["id"], params["part"])
    return TargetOp(op, "a%b", ("id", "part"), key, params if op == "upsert" else None, None)
