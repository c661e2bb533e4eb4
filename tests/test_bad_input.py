"""Bad input against real databases: clear messages naming table/column/key, exit codes, data kept safe."""

from __future__ import annotations

import sqlite3


def mapping_pair(ws, mapping: str, on_error: str = "stop"):
    (ws.root / "map.yaml").write_text(mapping, encoding="utf-8")
    ws.write_config(f"source: src\ntarget: dst\nmapping: map.yaml\non_error: {on_error}\nbatch_size: 100")


def test_unknown_table(ws):
    ws.sql(ws.source, "CREATE TABLE entries (id INTEGER PRIMARY KEY)")
    ws.write_config("source: src\ntarget: dst\ntables: [entries, invoices]")
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "tables.invoices: source table 'invoices' does not exist in src (config.yaml line 8)" in result.stderr


def test_unknown_column_in_mapping_names_file_and_line(ws):
    ws.sql(ws.source, "CREATE TABLE entries (id INTEGER PRIMARY KEY, amount NUMERIC(18,2))")
    mapping_pair(ws, "tables:\n  entries:\n    columns:\n      id: id\n      belop: amount_nok\n")
    result = ws.cdc("init", str(ws.config))
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: tables.entries.columns.belop: source table entries has no column "
                                     "'amount_nok' (did you mean 'amount'?) (map.yaml line 5)")


def test_table_without_primary_key_needs_a_key(ws):
    ws.sql(ws.source, "CREATE TABLE journal (voucher INTEGER NOT NULL, line INTEGER NOT NULL, amount NUMERIC(18,2))")
    ws.write_config("source: src\ntarget: dst\ntables: [journal]")
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 2
    assert "table journal has no primary key; name the columns that identify a row with `key: [..]`" in result.stderr
    mapping_pair(ws, "tables:\n  journal:\n    key: [voucher, line]\n")
    for command in ("init", "install", "run"):
        assert ws.cdc(command, *(["--once"] if command == "run" else []), str(ws.config)).returncode == 0
    ws.sql(ws.source, "INSERT INTO journal VALUES (1, 1, '10.00'); INSERT INTO journal VALUES (1, 2, '-10.00');"
                      "UPDATE journal SET amount = '-10.50' WHERE line = 2;")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    assert ws.rows(ws.target, "journal", "voucher, line") == [(1, 1, 10), (1, 2, -10.5)]


def test_source_database_that_does_not_exist(ws):
    ws.write_config("source: src\ntarget: dst\ntables: [entries]")
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"source database {ws.source} does not exist (connection src)" in result.stderr
    assert not ws.source.exists(), "checking must not create the source database"


def test_run_before_init_says_what_to_do(ws):
    ws.sql(ws.source, "CREATE TABLE entries (id INTEGER PRIMARY KEY)")
    ws.write_config("source: src\ntarget: dst\ntables: [entries]")
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 1
    assert f"target database {ws.target} does not exist (connection dst): `cdc init CONFIG` creates it" \
        in result.stderr
    assert not ws.target.exists(), "only init creates the target file"
    ws.sql(ws.target, "CREATE TABLE other (id INTEGER PRIMARY KEY)")  # a database, but not initialised
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 1
    assert "no cdc-sync state tables: run `cdc init CONFIG` first" in result.stderr
    assert ws.cdc("init", str(ws.config)).returncode == 0
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 1 and "capture is not installed for pair p: run `cdc install CONFIG`" in result.stderr


TOO_SMALL = """
CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance NUMERIC(18,2));
"""


def too_small_pair(ws, on_error: str):
    ws.sql(ws.source, TOO_SMALL)
    ws.write_config(f"source: src\ntarget: dst\ntables: [customers]\non_error: {on_error}\nbatch_size: 100")
    # The ledger's own table, made by the DBA: names of at most 12 characters, two decimals.
    ws.sql(ws.target, "CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(12) NOT NULL, "
                      "balance NUMERIC(18,2))")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    ws.sql(ws.source, "INSERT INTO customers VALUES (1, 'Kari AS', '1.00');"
                      "INSERT INTO customers VALUES (2, 'Blåbærsyltetøy AS', '2.00');"
                      "INSERT INTO customers VALUES (3, 'Ola AS', '3.005');"
                      "INSERT INTO customers VALUES (4, 'Per AS', '4.00');")


def test_value_too_big_for_target_is_parked_with_park(ws):
    too_small_pair(ws, "park")
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 0, result.stderr
    assert "2 parked in dead letters" in result.stdout
    assert ws.rows(ws.target, "customers") == [(1, "Kari AS", 1), (4, "Per AS", 4)]
    parked = ws.query(ws.target, "SELECT key, column_name, error, status FROM cdc_dead_letters ORDER BY id")
    assert parked == [("[2]", "name", "text of 17 characters does not fit 12; refusing to truncate", "parked"),
                      ("[3]", "balance", "3.005 has more than 2 decimals; refusing to round", "parked")]
    change = ws.query(ws.target, "SELECT change FROM cdc_dead_letters WHERE key = '[2]'")[0][0]
    assert '"name":"Blåbærsyltetøy AS"' in change  # the whole change is kept
    assert '"dead_letters": 2' in ws.cdc("status", "--json", str(ws.config)).stdout


def test_value_too_big_for_target_stops_cleanly_with_stop(ws):
    too_small_pair(ws, "stop")
    before = ws.query(ws.target, "SELECT position FROM cdc_checkpoints")
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: table customers key [2] column name: text of 17 characters does not "
                                     "fit 12; refusing to truncate")
    # Nothing half-applied: row 1 of the same batch is not there and the checkpoint did not move.
    assert ws.rows(ws.target, "customers") == []
    assert ws.query(ws.target, "SELECT position FROM cdc_checkpoints") == before
    assert ws.query(ws.target, "SELECT count(*) FROM cdc_dead_letters") == [(0,)]


def test_row_the_database_rejects_is_parked_alone(ws):
    ws.sql(ws.source, "CREATE TABLE entries (id INTEGER PRIMARY KEY, account INTEGER)")
    ws.write_config("source: src\ntarget: dst\ntables: [entries]\non_error: park")
    ws.sql(ws.target, "CREATE TABLE entries (id INTEGER PRIMARY KEY, account INTEGER CHECK (account BETWEEN 1000 AND 9999))")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    ws.sql(ws.source, "INSERT INTO entries VALUES (1, 1500); INSERT INTO entries VALUES (2, 42);"
                      "INSERT INTO entries VALUES (3, 3000);")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    assert ws.rows(ws.target, "entries") == [(1, 1500), (3, 3000)]
    assert ws.query(ws.target, "SELECT key, error FROM cdc_dead_letters") == [
        ("[2]", "the target refused the row: CHECK constraint failed: account BETWEEN 1000 AND 9999")]
    # The audit trail shows the parked change with its error, beside the applied ones.
    trail = ws.cdc("audit", str(ws.config), "--table", "entries", "--key", "2").stdout
    assert "entries (2)  insert [parked]" in trail and "error: the target refused the row: CHECK" in trail
    assert "entries              insert (parked)" in ws.cdc("audit", str(ws.config)).stdout


def test_init_is_idempotent_and_refuses_a_newer_state_schema(ws):
    ws.sql(ws.source, "CREATE TABLE entries (id INTEGER PRIMARY KEY, amount NUMERIC(18,2))")
    ws.write_config("source: src\ntarget: dst\ntables: [entries]")
    first = ws.cdc("init", str(ws.config))
    assert "state tables created at version 0004" in first.stdout and "entries: created" in first.stdout
    second = ws.cdc("init", str(ws.config))
    assert "already at version 0004" in second.stdout and "entries: exists, left as it is" in second.stdout
    # A target made by the first release (0001) is upgraded in place: its checkpoints stay.
    _downgrade(ws.target, "0001")
    assert "state tables upgraded 0001 -> version 0004" in ws.cdc("init", str(ws.config)).stdout
    assert ws.query(ws.target, "SELECT count(*) FROM cdc_reconcile_runs") == [(0,)]
    conn = sqlite3.connect(ws.target)
    with conn:
        conn.execute("UPDATE cdc_alembic_version SET version_num = '0999'")
    conn.close()
    result = ws.cdc("init", str(ws.config))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "state schema version '0999', which this cdc-sync does not know" in result.stderr
    assert ws.query(ws.target, "SELECT version_num FROM cdc_alembic_version") == [("0999",)]


def test_init_creates_target_tables_with_exact_types_and_never_alters(ws):
    ws.sql(ws.source, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, total NUMERIC(18,2) NOT NULL, "
                      "issued_at DATETIME, note VARCHAR(40))")
    mapping_pair(ws, "tables:\n  invoices:\n    target: fakturaer\n    columns:\n      faktura_id: id\n"
                     "      belop: {from: total, transforms: [{decimal: 2}]}\n"
                     "      dato: {from: issued_at, transforms: [{date_from_timestamp: Europe/Oslo}]}\n"
                     "      kilde: {constant: ERP}\n")
    assert ws.cdc("init", str(ws.config)).returncode == 0
    ddl = ws.query(ws.target, "SELECT sql FROM sqlite_master WHERE name = 'fakturaer'")[0][0]
    for fragment in ("faktura_id INTEGER NOT NULL", "belop NUMERIC(18, 2) NOT NULL", "dato DATE", "kilde TEXT",
                     "PRIMARY KEY (faktura_id)"):
        assert fragment in ddl, ddl
    ws.sql(ws.target, "ALTER TABLE fakturaer ADD COLUMN merknad TEXT")
    assert ws.cdc("init", str(ws.config)).returncode == 0
    assert "merknad" in ws.query(ws.target, "SELECT sql FROM sqlite_master WHERE name = 'fakturaer'")[0][0]


def _downgrade(db, revision: str) -> None:
    """Take a target's state tables back to an older release's schema with alembic."""
    import sqlalchemy as sa
    from alembic import command

    from cdc.state._migrate import _config

    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        config = _config()
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
    engine.dispose()


def test_a_sqlite_real_in_a_numeric_column_is_copied_as_the_triggers_log_it(ws):
    """0.1 + 0.2 stored in NUMERIC(12,2) is the REAL 0.30000000000000004: the copy parked it (more than
    2 decimals) while the triggers logged 0.3 and the stream applied it, one value, two rules."""
    ws.sql(ws.source, "CREATE TABLE inv (id INTEGER PRIMARY KEY, total NUMERIC(12,2) NOT NULL);"
                      "INSERT INTO inv VALUES (1, 0.1 + 0.2)")
    ws.write_config("source: src\ntarget: dst\ntables: [inv]\non_error: park")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    result = ws.cdc("run", "--once", str(ws.config))
    assert "snapshot 1 rows" in result.stdout and "parked" not in result.stdout, result.stdout + result.stderr
    assert ws.query(ws.target, "SELECT id, CAST(total AS TEXT) FROM inv") == [(1, "0.3")]
    assert ws.query(ws.target, "SELECT count(*) FROM cdc_dead_letters") == [(0,)]
    ws.sql(ws.source, "UPDATE inv SET total = 0.1 + 0.2 + 1 WHERE id = 1")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    assert ws.query(ws.target, "SELECT id, CAST(total AS TEXT) FROM inv") == [(1, "1.3")]
