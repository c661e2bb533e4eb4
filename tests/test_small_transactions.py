"""Many small source transactions over several tables: written in runs, in an order the target allows."""

from __future__ import annotations

import contextlib

import sqlalchemy as sa

from cdc import commands


@contextlib.contextmanager
def target_statements(ws):
    """Every statement this process sends to the pair's target database, as (SQL, rows)."""
    seen: list[tuple[str, int]] = []

    def note(conn, cursor, statement, parameters, context, executemany):
        if str(ws.target) in str(conn.engine.url):
            seen.append((statement, len(parameters) if executemany else 1))

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", note)


def small_transactions(ws, count: int) -> int:
    """``count`` transactions, each an insert into both tables, an update and every other one a delete
    of a party copied before."""
    script = []
    for n in range(1, count + 1):
        script.append(f"INSERT INTO entries VALUES ({n}, 1500, '1.00', 'NOK', 'bilag {n}', NULL);"
                      f"INSERT INTO parties VALUES ('p{n}', 1, 'Part {n}');"
                      f"UPDATE entries SET amount = amount + 1 WHERE id = {max(1, n - 1)};")
        if n % 2 == 0:
            script.append(f"DELETE FROM parties WHERE code = 'old{n}' AND region = 1;")
    for part in script:
        ws.sql(ws.source, part)  # one transaction each
    return 3 * count + count // 2


def test_small_transactions_on_two_tables_are_written_in_runs_not_one_statement_each(ledger):
    ws = ledger
    ws.sql(ws.source, "".join(f"INSERT INTO parties VALUES ('old{n}', 1, 'Gammel {n}');" for n in range(1, 101)))
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    changes = small_transactions(ws, 100)
    with target_statements(ws) as seen:
        commands.run(str(ws.config), once=True)
    writes = [(sql, rows) for sql, rows in seen if sql.startswith(("INSERT INTO entries", "INSERT INTO parties",
                                                                      "DELETE FROM entries", "DELETE FROM parties"))]
    assert sum(rows for _, rows in writes) == changes
    # batch_size 50: about 7 parts of 2 tables x (upserts, deletes); one statement per change was 350.
    assert len(writes) <= changes // 5, f"{len(writes)} statements for {changes} changes"
    for table, order in (("entries", "id"), ("parties", "code, region")):
        assert ws.rows(ws.source, table, order) == ws.rows(ws.target, table, order), table


def test_a_target_table_with_a_unique_index_gets_its_changes_in_source_order(ledger):
    """A party deleted and another given its name in the next transaction: written out of order,
    the new row would hit the unique index before the old one is gone."""
    ws = ledger
    ws.sql(ws.source, "INSERT INTO parties VALUES ('a', 1, 'Fjord AS'); INSERT INTO parties VALUES ('c', 1, 'Vik AS')")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    ws.sql(ws.target, "CREATE UNIQUE INDEX parties_name ON parties (name)")
    ws.sql(ws.source, "DELETE FROM parties WHERE code = 'a'; INSERT INTO entries VALUES (1, 1500, '1.00', 'NOK', NULL, NULL)")
    ws.sql(ws.source, "INSERT INTO parties VALUES ('b', 1, 'Fjord AS'); UPDATE parties SET name = 'Vika AS' WHERE code = 'c'")
    with target_statements(ws) as seen:
        commands.run(str(ws.config), once=True)
    assert not [sql for sql, _ in seen if sql.startswith("SAVEPOINT")], "a refused row made the part run again"
    assert ws.rows(ws.target, "parties", "code") == [("b", 1, "Fjord AS"), ("c", 1, "Vika AS")]
    assert ws.query(ws.target, "SELECT count(*) FROM cdc_dead_letters") == [(0,)]
