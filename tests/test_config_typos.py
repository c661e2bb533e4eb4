"""A typo anywhere in a config or mapping is an error naming file, line and key, never ignored.

Each case is run through the real `cdc check`, as a user would meet it: exit 2, one line on
stderr, no traceback; near misses say "did you mean".
"""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
import time

import pytest

SCHEMA = """
CREATE TABLE invoices (id INTEGER PRIMARY KEY, navn TEXT, status TEXT NOT NULL, amount NUMERIC(10,2),
    issued_at DATETIME, flag INTEGER);
"""
CONFIG = """\
connections:
  src: sqlite:///source.db
  dst: sqlite:///target.db
pairs:
  p:
    source: src
    target: dst
    mapping: m.yaml
"""


@pytest.fixture
def erp(ws):
    ws.sql(ws.source, SCHEMA + "INSERT INTO invoices VALUES (1, 'Ås AS', 'open', 10.50, '2024-01-02 10:00:00', 1);"
                               "INSERT INTO invoices VALUES (2, 'Bø AS', 'draft', 20.00, '2024-01-03 10:00:00', 0);")
    ws.config.write_text(CONFIG, encoding="utf-8")
    return ws


def mapping(ws, text: str) -> None:
    (ws.root / "m.yaml").write_text(textwrap.dedent(text), encoding="utf-8")


def refused(ws, *args: str) -> str:
    """Run `cdc check` (or the command given); assert the house-format refusal and return its line."""
    result = ws.cdc(*(args or ("check",)), str(ws.config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_a_misspelt_transforms_key_is_an_error_not_a_dropped_transform(erp):
    mapping(erp, """\
        tables:
          invoices:
            columns:
              id: id
              navn: {from: navn, trasforms: [trim]}
    """)
    assert refused(erp) == ("error: tables.invoices.columns.navn.trasforms: unknown key 'trasforms' "
                            "(did you mean 'transforms'?) (m.yaml line 5)")


def test_a_misspelt_filter_value_is_an_error_not_a_filter_on_null(erp):
    mapping(erp, """\
        tables:
          invoices:
            filter:
              - {column: status, op: "!=", vaule: draft}
    """)
    assert refused(erp) == ("error: tables.invoices.filter.0.vaule: unknown key 'vaule' (did you mean 'value'?) "
                            "(m.yaml line 4)")
    # and `run`, which loads the same config, refuses it too: no draft reaches the ledger
    assert "unknown key 'vaule'" in refused(erp, "run", "--once")
    assert not erp.target.exists()


def test_transforms_written_as_a_string_says_how_to_write_the_list(erp):
    mapping(erp, """\
        tables:
          invoices:
            columns:
              id: id
              navn: {from: navn, transforms: trim}
    """)
    assert refused(erp) == ("error: tables.invoices.columns.navn.transforms: must be a list: write [trim] "
                            "(m.yaml line 5)")


def test_upper_on_a_numeric_column_is_refused_at_check(erp):
    mapping(erp, """\
        tables:
          invoices:
            columns:
              id: id
              belop: {from: amount, transforms: [upper]}
    """)
    assert refused(erp) == ("error: tables.invoices.columns.belop: upper needs text, but source column amount of "
                            "invoices is NUMERIC(10, 2) (m.yaml line 5)")


@pytest.mark.parametrize("column, transforms, needs", [
    ("amount", "[{decimal: 2}, lower]", "lower needs text, but {decimal: 2} before it gives a number"),
    ("navn", "[boolean]", "boolean needs a boolean or an integer, but source column navn of invoices is TEXT"),
    ("amount", "[{date_from_timestamp: Europe/Oslo}]", "{date_from_timestamp: Europe/Oslo} needs a date or text or "
                                                       "a timestamp, but source column amount"),
    ("issued_at", "[{decimal: 2}]", "{decimal: 2} needs an integer or a number or text, but source column issued_at"),
])
def test_every_transform_is_checked_against_the_kind_of_value_it_gets(erp, column, transforms, needs):
    mapping(erp, f"""\
        tables:
          invoices:
            columns:
              id: id
              x: {{from: {column}, transforms: {transforms}}}
    """)
    assert f"tables.invoices.columns.x: {needs}" in refused(erp)


def test_a_target_column_missing_from_an_existing_table_is_refused_at_check(erp):
    erp.sql(erp.target, "CREATE TABLE fakturaer (id INTEGER PRIMARY KEY, navn TEXT);")
    mapping(erp, """\
        tables:
          invoices:
            target: fakturaer
            columns:
              id: id
              navn: navn
              belop: amount
    """)
    assert refused(erp) == ("error: tables.invoices.columns.belop: target table fakturaer has no column 'belop' "
                            "(add it to the table, or map to one of id, navn) (m.yaml line 7)")


@pytest.mark.parametrize("target_columns, column, says", [
    ("navn NUMERIC(10,2)", "navn: {from: navn, transforms: [upper]}",
     "navn: upper gives text, but target column fakturaer.navn is NUMERIC(10, 2)"),
    ("belop INTEGER", "belop: {from: amount, transforms: [{decimal: 2}]}",
     "belop: {decimal: 2} gives 2 decimals, but target column fakturaer.belop is INTEGER"),
    ("dato INTEGER", "dato: {from: issued_at, transforms: [{date_from_timestamp: Europe/Oslo}]}",
     "dato: {date_from_timestamp: Europe/Oslo} gives a date, but target column fakturaer.dato is INTEGER"),
])
def test_a_transform_whose_result_the_target_column_cannot_hold_is_refused(erp, target_columns, column, says):
    erp.sql(erp.target, f"CREATE TABLE fakturaer (id INTEGER PRIMARY KEY, {target_columns});")
    mapping(erp, f"""\
        tables:
          invoices:
            target: fakturaer
            columns:
              id: id
              {column}
    """)
    assert f"error: tables.invoices.columns.{says} (m.yaml line 6)" == refused(erp)


def test_a_key_that_is_not_the_target_tables_unique_key_is_refused(erp):
    erp.sql(erp.target, "CREATE TABLE fakturaer (nr INTEGER PRIMARY KEY, id INTEGER, navn TEXT);")
    mapping(erp, """\
        tables:
          invoices:
            target: fakturaer
            columns: {id: id, navn: navn}
    """)
    assert refused(erp) == ("error: tables.invoices.key: the key (id) is not the primary key (nr) or a unique index "
                            "of target table fakturaer: an upsert finds its row by that key (m.yaml line 2)")


@pytest.mark.parametrize("condition, says", [
    ('{column: amount, op: ">", value: "100"}',
     "'100' is text, but column amount of invoices is NUMERIC(10, 2), so the filter would compare unlike values "
     "(write it without quotes)"),
    ('{column: status, op: "=", value: 1}',
     "1 is an integer, but column status of invoices is TEXT, so the filter would compare unlike values "
     "(write it in quotes)"),
    ('{column: issued_at, op: ">=", value: 2024-01-01}', "datetime.date(2024, 1, 1) is a date, but column issued_at"),
])
def test_a_filter_value_of_another_kind_than_its_column_is_refused(erp, condition, says):
    mapping(erp, f"""\
        tables:
          invoices:
            filter:
              - {condition}
    """)
    assert refused(erp).startswith(f"error: tables.invoices.filter.0.value: {says}")


@pytest.mark.parametrize("condition, says", [
    ('{column: status, op: "!="}', "tables.invoices.filter.0: op '!=' needs a value"),
    ('{column: status, op: "=", value: null}', "tables.invoices.filter.0.value: value is null: to compare with NULL "
                                               "write op: 'is null' or 'is not null'"),
    ('{column: status, op: "is null", value: x}', "tables.invoices.filter.0.value: op 'is null' takes no value"),
    ('{column: status, op: "in", value: draft}', "tables.invoices.filter.0.value: op 'in' needs a list value"),
    ('{column: status, op: "=", value: [a, b]}', "tables.invoices.filter.0.value: op '=' compares with one value"),
    ('{column: status, op: "==", value: x}', "tables.invoices.filter.0.op: '==' is not one of =, !=, <, <=, >, >=, "
                                             "in, not in, is null, is not null (did you mean '='?)"),
])
def test_a_filter_must_say_what_it_compares_with(erp, condition, says):
    mapping(erp, f"""\
        tables:
          invoices:
            filter:
              - {condition}
    """)
    assert refused(erp).startswith(f"error: {says}")


# Every object of both files forbids unknown keys: (file, text, dotted key, line, hint).
UNKNOWN_KEYS = [
    ("config.yaml", CONFIG + "    batchsize: 10\n", "pairs.p.batchsize", 9, "(did you mean 'batch_size'?)"),
    ("config.yaml", CONFIG + "pair: {}\n", "pair", 9, "(did you mean 'pairs'?)"),
    ("config.yaml", CONFIG.replace("  dst: sqlite:///target.db", "  dst: {driver: sqlite, databse: target.db}"),
     "connections.dst.databse", 3, "(did you mean 'database'?)"),
    ("config.yaml", CONFIG.replace("mapping: m.yaml", "mapping: m.yaml\n    capture: timestamp\n"
                                   "    timestamp: {column: issued_at, overlap_second: 5}"),
     "pairs.p.timestamp.overlap_second", 10, "(did you mean 'overlap_seconds'?)"),
    ("m.yaml", "tables:\n  invoices:\n    taget: fakturaer\n", "tables.invoices.taget", 3, "(did you mean 'target'?)"),
    ("m.yaml", "table:\n  invoices: {}\n", "table", 1, "(did you mean 'tables'?)"),
    ("m.yaml", "tables:\n  invoices:\n    columns:\n      id: {form: id}\n", "tables.invoices.columns.id.form", 4,
     "(did you mean 'from'?)"),
    ("m.yaml", "tables:\n  invoices:\n    filter:\n      - {colunm: status, op: is null}\n",
     "tables.invoices.filter.0.colunm", 4, "(did you mean 'column'?)"),
    ("m.yaml", "tables:\n  invoices:\n    control_totals: {account: a, date: b, amuont: c}\n",
     "tables.invoices.control_totals.amuont", 3, "(did you mean 'amount'?)"),
    ("m.yaml", "tables:\n  invoices:\n    sharde: true\n", "tables.invoices.sharde", 3, "(did you mean 'shared'?)"),
    ("m.yaml", "tables:\n  invoices:\n    comment: hello\n", "tables.invoices.comment", 3,
     "(expected one of balance, columns, conflict, control_totals, delete_missing, filter, key, ledger, mode, "
     "period, shared, target, update_missing)"),
]


@pytest.mark.parametrize("file, text, dotted, line, hint", UNKNOWN_KEYS, ids=[u[2] for u in UNKNOWN_KEYS])
def test_every_object_forbids_unknown_keys(erp, file, text, dotted, line, hint):
    if file == "m.yaml":
        mapping(erp, "tables:\n  invoices: {}\n")
    (erp.root / file).write_text(text, encoding="utf-8")
    key = dotted.rsplit(".", 1)[-1]
    assert refused(erp) == f"error: {dotted}: unknown key {key!r} {hint} ({file} line {line})"


@pytest.mark.parametrize("setting, says", [
    ("on_error: parq", "pairs.p.on_error: 'parq' is not one of park, stop (did you mean 'park'?)"),
    ("capture: triger", "pairs.p.capture: 'triger' is not one of trigger, timestamp, logical, binlog, rowversion, "
                        "change_tracking (did you mean 'trigger'?)"),
    ("source_timezone: Europe/Olso", "pairs.p.source_timezone: 'Europe/Olso' is not a time zone name"),
    ("poll_interval: soon", "pairs.p.poll_interval: 'soon' is not a positive number"),
    ("tables: invoices", "pairs.p.tables: must be a list: write [invoices]"),
])
def test_misspelt_values_say_what_is_allowed(erp, setting, says):
    mapping(erp, "tables:\n  invoices: {}\n")
    erp.config.write_text(CONFIG + f"    {setting}\n", encoding="utf-8")
    assert refused(erp).startswith(f"error: {says}")


def test_a_misspelt_transform_name_gets_did_you_mean(erp):
    mapping(erp, "tables:\n  invoices:\n    columns:\n      id: id\n      navn: {from: navn, transforms: [uper]}\n")
    assert refused(erp).startswith("error: tables.invoices.columns.navn.transforms.0: unknown transform 'uper' "
                                   "(did you mean 'upper'?)")


def test_a_constant_takes_no_transforms_and_a_column_needs_one_origin(erp):
    mapping(erp, "tables:\n  invoices:\n    columns:\n      id: id\n      k: {constant: ERP, transforms: [lower]}\n")
    assert refused(erp) == "error: tables.invoices.columns.k.transforms: a constant takes no transforms (m.yaml line 5)"
    mapping(erp, "tables:\n  invoices:\n    columns:\n      id: id\n      k: {from: navn, constant: ERP}\n")
    assert "give either from: <source column> or constant: <value>, not both" in refused(erp)


def test_merge_keys_share_settings_and_a_mappings_own_keys_win(erp):
    mapping(erp, """\
        tables:
          invoices:
            columns: &common
              id: id
              navn: {from: navn, transforms: [trim]}
          other:
            target: other
            columns:
              <<: *common
              navn: navn
    """)
    from cdc.mapping import load_mapping

    spec = load_mapping(erp.root / "m.yaml")
    assert [(c.target, c.source, c.transforms) for c in spec.tables["other"].columns] == \
        [("id", "id", ()), ("navn", "navn", ())]
    assert spec.tables["invoices"].columns[1].transforms == (("trim", None),)


def test_a_key_written_twice_is_still_an_error(erp):
    mapping(erp, "tables:\n  invoices:\n    target: a\n    target: b\n")
    assert refused(erp) == "error: tables.invoices.target: duplicate key (m.yaml line 4)"


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_a_yaml_alias_bomb_is_refused_quickly_without_eating_memory(erp):
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    (erp.root / "m.yaml").write_text("\n".join(levels) + "\ntables:\n  invoices: {columns: {id: id, x: *a8}}\n",
                                     encoding="utf-8")
    started = time.monotonic()
    # Under a 2 GB address-space limit: expanding the bomb (9^9 strings) would need far more.
    result = subprocess.run([sys.executable, "-m", "cdc", "check", str(erp.config)], capture_output=True, text=True,
                            cwd=erp.root, timeout=120, preexec_fn=_limit_memory)
    assert result.returncode == 2, result.stderr[-2000:]
    assert time.monotonic() - started < 30
    assert "aliases repeat more than 10,000 YAML nodes; refusing to expand them (an alias bomb?)" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("file, text, says", [
    ("m.yaml", "tables: &t\n  invoices: [*t]\n",
     "error: tables.invoices.0: a YAML alias here refers to the block that contains it (anchored at line 1), so its "
     "value would never end (m.yaml line 2)"),
    ("m.yaml", "tables:\n  invoices: &i\n    <<: *i\n",
     "error: tables.invoices: a YAML alias here refers to the block that contains it (anchored at line 2), so its "
     "value would never end (m.yaml line 2)"),
    ("config.yaml", CONFIG + "  q: &q {source: src, target: dst, tables: *q}\n",
     "error: pairs.q.tables: a YAML alias here refers to the block that contains it (anchored at line 9), so its "
     "value would never end (config.yaml line 9)"),
    ("m.yaml", "tables:\n  invoices: " + "[" * 5000 + "]" * 5000 + "\n",
     "error: m.yaml: nested too deeply to read (thousands of levels of [ or {)"),
    ("m.yaml", "tables:\n  ? [invoices]\n  : {target: a}\n",
     "error: tables: a key must be a name, not a list or mapping (m.yaml line 2)"),
])
def test_a_recursive_alias_or_endless_nesting_is_one_line_naming_the_file(erp, file, text, says):
    (erp.root / "m.yaml").write_text("tables:\n  invoices: {}\n", encoding="utf-8")
    (erp.root / file).write_text(text, encoding="utf-8")
    assert refused(erp) == says


def test_a_misspelt_column_name_gets_did_you_mean(erp):
    mapping(erp, "tables:\n  invoices:\n    columns:\n      id: id\n      belop: amout\n")
    assert refused(erp) == ("error: tables.invoices.columns.belop: source table invoices has no column 'amout' "
                            "(did you mean 'amount'?) (m.yaml line 5)")
    erp.sql(erp.target, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount NUMERIC(10,2));")
    mapping(erp, "tables:\n  invoices:\n    columns:\n      id: id\n      amuont: amount\n")
    assert refused(erp) == ("error: tables.invoices.columns.amuont: target table invoices has no column 'amuont' "
                            "(did you mean 'amount'?) (m.yaml line 5)")


@pytest.mark.parametrize("transforms", ["[trim, upper]", "[lower]", "[{map: {a: b}}]"])
def test_a_key_column_through_a_transform_that_can_merge_two_keys_is_refused(erp, transforms):
    """'a' and 'A ' would be one target row: the second overwrote the first, deleting one deleted both."""
    erp.sql(erp.source, "CREATE TABLE codes (code TEXT PRIMARY KEY, label TEXT)")
    mapping(erp, f"""\
        tables:
          codes:
            key: [code]
            columns:
              code: {{from: code, transforms: {transforms}}}
              label: label
    """)
    line = refused(erp)
    assert line.startswith("error: tables.codes.columns.code: key column code goes through ") and \
        "two source rows one target key" in line and line.endswith("(m.yaml line 5)"), line
    assert not (erp.root / "target.db").exists()


@pytest.mark.parametrize("column, says", [
    ("amount: {constant: abc}", "{constant: abc} gives 'abc', which target column invoices.amount"),
    ("status: {from: status, transforms: [{map: {open: åpen, draft: utkast-som-er-for-langt}}]}",
     "map gives 'utkast-som-er-for-langt', which target column invoices.status"),
])
def test_a_constant_or_mapped_value_the_target_column_cannot_hold_is_refused_at_check(erp, column, says):
    """Known before any row moves: it failed (or parked) every row at run, after `check` said OK."""
    erp.sql(erp.target, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount INTEGER, status VARCHAR(10))")
    mapping(erp, f"""\
        tables:
          invoices:
            columns:
              id: id
              {column}
    """)
    line = refused(erp)
    assert says in line and line.endswith("(m.yaml line 5)"), line


@pytest.mark.parametrize("target_table", [None, "CREATE TABLE invoices (id INTEGER PRIMARY KEY, navn TEXT, endret TEXT)"],
                         ids=["before init: the source column", "the target column"])
def test_newest_wins_on_a_text_column_is_refused(erp, target_table):
    """Text compares letter by letter: '28.02.2026' beat the source's newer '02.03.2026', exit 0."""
    if target_table:
        erp.sql(erp.target, target_table)
    mapping(erp, """\
        tables:
          invoices:
            conflict: {newest_wins: endret}
            columns:
              id: id
              navn: navn
              endret: navn
    """)
    line = refused(erp)
    assert "newest_wins compares 'endret'" in line and "TIMESTAMP" in line and line.endswith("(m.yaml line 2)"), line


def test_newest_wins_on_a_datetime_or_a_version_number_passes_check(erp):
    for column in ("issued_at", "flag"):
        mapping(erp, f"""\
            tables:
              invoices:
                conflict: {{newest_wins: {column}}}
        """)
        result = erp.cdc("check", str(erp.config))
        assert result.returncode == 0, result.stderr
