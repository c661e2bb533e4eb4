"""Two pairs writing one target table: refused unless their rows provably cannot meet.

Without the rule one pair's filter (a row leaving it is deleted from the target) or delete removed
rows the other pair wrote, and which rows survived depended on the order the pairs ran.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from cdc.adapters.sqlite.identity import case_insensitive
from cdc.config import load_config

SCHEMA = "CREATE TABLE invoices (id INTEGER PRIMARY KEY, status TEXT NOT NULL, amount NUMERIC(10,2) NOT NULL);"
ROWS = "".join(f"INSERT INTO invoices VALUES ({i}, '{'draft' if i % 2 else 'sent'}', {i}.50);" for i in range(1, 11))


def mapping_file(ws, name: str, body: str) -> None:
    (ws.root / name).write_text(textwrap.dedent(body), encoding="utf-8")


def config(ws, pairs: str, connections: str = "") -> None:
    ws.config.write_text("connections:\n  erp: sqlite:///source.db\n  ledger: sqlite:///target.db\n" + connections
                         + "pairs:\n" + textwrap.indent(textwrap.dedent(pairs), "  "), encoding="utf-8")


def refusal(ws) -> str:
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "config OK" not in result.stdout
    return result.stderr.strip()


@pytest.fixture
def erp(ws):
    ws.sql(ws.source, SCHEMA + ROWS)
    return ws


def test_two_pairs_writing_one_table_one_with_a_filter_are_refused_by_check(erp):
    mapping_file(erp, "all.yaml", "tables:\n  invoices:\n    target: fakturaer\n")
    mapping_file(erp, "sent.yaml", """\
        tables:
          invoices:
            target: fakturaer
            filter:
              - {column: status, op: "!=", value: draft}
    """)
    config(erp, """\
        everything: {source: erp, target: ledger, mapping: all.yaml}
        sent_only: {source: erp, target: ledger, mapping: sent.yaml}
    """)
    assert refusal(erp) == (
        "error: pairs.sent_only: target table fakturaer (connection ledger) is written by pair everything table "
        "invoices and pair sent_only table invoices; which rows survive would depend on the order they run: mark it "
        "shared: true in each mapping, each with a constant key column of its own value, e.g. `kilde: {constant: A}` "
        "and `key: [id, kilde]` (see \"Shared target tables\" in the README) (pair everything: all.yaml line 2; "
        "pair sent_only: sent.yaml line 2)")
    for command in ("init", "run"):  # every command loads the config, so none of them goes ahead
        assert erp.cdc(command, str(erp.config)).returncode == 2
    assert not erp.target.exists()


def test_identity_pairs_from_two_sources_into_one_table_are_refused(erp):
    erp.sql(erp.root / "other.db", SCHEMA)
    config(erp, """\
        a: {source: erp, target: ledger, tables: [invoices]}
        b: {source: other, target: ledger, tables: [invoices]}
    """, "  other: sqlite:///other.db\n")
    assert refusal(erp).startswith("error: pairs.b: target table invoices (connection ledger) is written by pair a "
                                   "table invoices and pair b table invoices;")


def test_one_database_reached_through_two_connections_is_one_database(erp):
    config(erp, """\
        a: {source: erp, target: ledger, tables: [invoices]}
        b: {source: erp, target: ledger_again, tables: [invoices]}
    """, "  ledger_again: {driver: sqlite, database: ./target.db}\n")
    assert "error: pairs.b: target table invoices (connection ledger) is written by" in refusal(erp)


@pytest.mark.parametrize("a_extra, b_extra, says", [
    ("", "", "is shared by pair a table invoices and pair b table invoices, but they have no constant key column in "
             "common, so their keys could meet"),
    ("      kilde: {constant: ERP}\n    key: [id, kilde]\n", "      kilde: {constant: ERP}\n    key: [id, kilde]\n",
     "is shared, but pair a and pair b both write kilde = 'ERP' into it, so their keys could meet: give each its own "
     "value"),
    ("      kilde: {constant: A}\n    key: [id, kilde]\n", "      kilde: {constant: B}\n",
     "but they have no constant key column in common"),
])
def test_a_shared_table_needs_a_constant_key_column_of_distinct_values(erp, a_extra, b_extra, says):
    for name, extra in (("a.yaml", a_extra), ("b.yaml", b_extra)):
        mapping_file(erp, name, "tables:\n  invoices:\n    target: fakturaer\n    shared: true\n"
                                "    columns:\n      id: id\n      status: status\n" + extra)
    config(erp, """\
        a: {source: erp, target: ledger, mapping: a.yaml}
        b: {source: erp, target: ledger, mapping: b.yaml}
    """)
    assert says in refusal(erp)


SHARED = """\
tables:
  invoices:
    target: fakturaer
    shared: true
    key: [id, kilde]
    columns:
      id: id
      status: status
      belop: amount
      kilde: {{constant: {source}}}
{filter}"""


@pytest.mark.parametrize("order", [("all", "sent"), ("sent", "all")])
def test_shared_table_with_distinct_constants_keeps_every_pairs_rows_in_any_order(erp, order):
    mapping_file(erp, "all.yaml", SHARED.format(source="ALL", filter=""))
    mapping_file(erp, "sent.yaml", SHARED.format(source="SENT", filter="    filter:\n"
                                                 "      - {column: status, op: '!=', value: draft}\n"))
    config(erp, """\
        all: {source: erp, target: ledger, mapping: all.yaml}
        sent: {source: erp, target: ledger, mapping: sent.yaml}
    """)
    checked = erp.cdc("check", str(erp.config))
    assert checked.returncode == 0, checked.stderr
    assert "invoices -> fakturaer key (id), shared (kilde = 'SENT')" in checked.stdout
    for command in ("init", "install"):
        assert erp.cdc(command, str(erp.config)).returncode == 0
    assert [r[1] for r in erp.query(erp.target, "PRAGMA table_info(fakturaer)") if r[5]] == ["id", "kilde"]

    def run_in_order():
        for pair in order:
            result = erp.cdc("run", "--once", "--pair", pair, str(erp.config))
            assert result.returncode == 0, result.stderr

    def ledger(kilde):
        return erp.query(erp.target, "SELECT id, status FROM fakturaer WHERE kilde = ? ORDER BY id", kilde)

    run_in_order()
    assert ledger("ALL") == [(i, "draft" if i % 2 else "sent") for i in range(1, 11)]
    assert ledger("SENT") == [(i, "sent") for i in range(2, 11, 2)]
    # Invoice 2 goes back to draft (it leaves pair sent's filter: sent deletes its row), invoice 5 is
    # sent, invoice 10 is deleted: each pair changes only its own rows.
    erp.sql(erp.source, "UPDATE invoices SET status = 'draft' WHERE id = 2; UPDATE invoices SET status = 'sent' "
                        "WHERE id = 5; DELETE FROM invoices WHERE id = 10;")
    run_in_order()
    source = erp.query(erp.source, "SELECT id, status FROM invoices ORDER BY id")
    assert ledger("ALL") == source
    assert ledger("SENT") == [r for r in source if r[1] != "draft"]

    # Reconcile compares (and repairs) only a pair's own rows of the shared table.
    for pair in order:
        result = erp.cdc("reconcile", "--pair", pair, "--settle", "0", str(erp.config))
        assert result.returncode == 0, result.stdout + result.stderr
    erp.sql(erp.target, "DELETE FROM fakturaer WHERE kilde = 'ALL' AND id = 3")
    result = erp.cdc("reconcile", "--pair", "all", "--settle", "0", "--repair", str(erp.config))
    assert result.returncode == 1 and "1 missing in target" in result.stdout, result.stdout + result.stderr
    assert ledger("ALL") == source and ledger("SENT") == [r for r in source if r[1] != "draft"]


def test_pairs_of_two_config_files_writing_one_table_are_refused_unless_both_share_it(erp):
    """Each config alone is fine, so `check` cannot see it; the target's checkpoints can: the second
    pair to run stops (exit 2) naming the first, instead of overwriting and deleting its rows."""
    mapping_file(erp, "all.yaml", "tables:\n  invoices:\n    target: fakturaer\n")
    mapping_file(erp, "sent.yaml", "tables:\n  invoices:\n    target: fakturaer\n    filter:\n"
                                   "      - {column: status, op: '!=', value: draft}\n")
    other = erp.root / "other.yaml"
    config(erp, "all: {source: erp, target: ledger, mapping: all.yaml}\n")
    other.write_text(erp.config.read_text().replace("all: {", "sent: {").replace("all.yaml", "sent.yaml"))
    for path in (erp.config, other):
        for command in ("init", "install"):
            assert erp.cdc(command, str(path)).returncode == 0
    assert erp.cdc("run", "--once", str(erp.config)).returncode == 0
    refused = erp.cdc("run", "--once", str(other))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert refused.stderr.startswith("error: pair sent: target table fakturaer is also written by pair all (its "
                                     "checkpoint in ledger says so)"), refused.stderr
    assert "DELETE FROM cdc_checkpoints WHERE pair = 'all'" in refused.stderr
    assert erp.query(erp.target, "SELECT count(*) FROM fakturaer") == [(10,)]  # nothing of sent's written
    assert erp.cdc("status", str(other)).returncode == 1
    # Both marked shared, each with its own constant: both run.
    mapping_file(erp, "all.yaml", SHARED.format(source="ALL", filter=""))
    mapping_file(erp, "sent.yaml", SHARED.format(source="SENT", filter=""))
    erp.sql(erp.target, "DROP TABLE fakturaer; DELETE FROM cdc_checkpoints")
    for path in (erp.config, other):
        for command in ("init", "run"):
            result = erp.cdc(command, *(["--once"] if command == "run" else []), str(path))
            assert result.returncode == 0, result.stderr
    assert erp.query(erp.target, "SELECT kilde, count(*) FROM fakturaer GROUP BY kilde ORDER BY kilde") == \
        [("ALL", 10), ("SENT", 10)]


# -- one database, many spellings ----------------------------------------------------------------
def sqlite_spellings(root):
    """Other URLs of target.db: each reaches the same file (or, before it exists, the same path)."""
    return {
        "dot": "sqlite:///./target.db",
        "absolute dot": f"sqlite:///{root}/./target.db",
        "double slash": f"sqlite:///{root}//target.db",
        "dot dot": f"sqlite:///{root}/sub/../target.db",
        "symlinked folder": f"sqlite:///{root}/link/target.db",
        "symlinked file": f"sqlite:///{root}/alias.db",
        "fields": f"{{driver: sqlite, database: '{root}//./target.db'}}",
    }


@pytest.mark.parametrize("exists", [False, True], ids=["before init", "after init"])
@pytest.mark.parametrize("spelling", ["dot", "absolute dot", "double slash", "dot dot", "symlinked folder",
                                      "symlinked file", "fields"])
def test_one_sqlite_target_spelt_two_ways_is_one_database(erp, spelling, exists):
    (erp.root / "sub").mkdir()
    (erp.root / "link").symlink_to(erp.root, target_is_directory=True)
    (erp.root / "alias.db").symlink_to(erp.root / "target.db")
    if exists:
        erp.sql(erp.target, "CREATE TABLE kept (id INTEGER PRIMARY KEY);")
    config(erp, """\
        a: {source: erp, target: ledger, tables: [invoices]}
        b: {source: erp, target: ledger_again, tables: [invoices]}
    """, f"  ledger_again: {sqlite_spellings(erp.root)[spelling]}\n")
    assert "error: pairs.b: target table invoices (connection ledger) is written by" in refusal(erp)
    assert erp.target.exists() == exists


def test_a_hard_link_to_the_target_file_is_the_same_database(erp):
    erp.sql(erp.target, "CREATE TABLE kept (id INTEGER PRIMARY KEY);")
    os.link(erp.target, erp.root / "hard.db")
    config(erp, """\
        a: {source: erp, target: ledger, tables: [invoices]}
        b: {source: erp, target: hard, tables: [invoices]}
    """, "  hard: sqlite:///hard.db\n")
    assert "error: pairs.b: target table invoices (connection ledger) is written by" in refusal(erp)


def test_file_names_that_differ_in_case_are_one_database_only_where_the_file_system_ignores_case(erp):
    config(erp, """\
        a: {source: erp, target: ledger, tables: [invoices]}
        b: {source: erp, target: upper, tables: [invoices]}
    """, "  upper: sqlite:///TARGET.db\n")
    if case_insensitive(str(erp.root)):
        assert "error: pairs.b: target table invoices (connection ledger) is written by" in refusal(erp)
    else:  # two files: each pair writes its own table
        pairs = load_config(erp.config).pairs
        assert pairs["a"].target.url != pairs["b"].target.url


@pytest.mark.parametrize("first, second", [
    ("postgresql://cdc@db.example.no:5433/regnskap", "postgresql://cdc@/regnskap?host=db.example.no&port=5433"),
    ("postgresql://cdc@DB.example.no/regnskap", "postgresql://other:pw@db.example.no:5432/regnskap"),
    ("postgresql://cdc@/regnskap", "postgresql://cdc@localhost:5432/regnskap?sslmode=disable"),
    ("postgresql://cdc@127.0.0.1/regnskap", "postgresql+psycopg://cdc@/regnskap?host=/var/run/postgresql"),
    ("{driver: postgresql, host: db, user: cdc, database: regnskap}", "postgresql://cdc@/regnskap?host=db"),
    ("mysql://cdc@db:3307/shop", "mariadb://cdc@/shop?host=db&port=3307"),
    ("mysql://cdc@db/shop", "mysql+pymysql://cdc@db:3306/shop"),
])
def test_one_server_database_spelt_two_ways_is_one_database(erp, first, second):
    erp.config.write_text(f"connections:\n  erp: sqlite:///source.db\n  one: {first}\n  two: {second}\n"
                          "pairs:\n  a: {source: erp, target: one, tables: [invoices]}\n"
                          "  b: {source: erp, target: two, tables: [invoices]}\n", encoding="utf-8")
    assert "error: pairs.b: target table invoices (connection one) is written by" in refusal(erp)


@pytest.mark.parametrize("first, second", [
    ("postgresql://cdc@db.example.no:5433/regnskap", "postgresql://cdc@db.example.no:5432/regnskap"),
    ("postgresql://cdc@db.example.no/regnskap", "postgresql://cdc@/regnskap?host=other.example.no"),
    ("postgresql://cdc@db/regnskap", "postgresql://cdc@db/regnskap2"),
    ("mysql://cdc@db:3307/shop", "mysql://cdc@/shop?host=db"),
])
def test_other_servers_or_databases_are_other_databases(erp, first, second):
    erp.config.write_text(f"connections:\n  erp: sqlite:///source.db\n  one: {first}\n  two: {second}\n"
                          "pairs:\n  a: {source: erp, target: one, tables: [invoices]}\n"
                          "  b: {source: erp, target: two, tables: [invoices]}\n", encoding="utf-8")
    assert set(load_config(erp.config).pairs) == {"a", "b"}
