"""SQL Server through the ODBC adapter.

Two kinds of tests. Statement-level tests, which always run: the SQL the adapter sends to SQL Server,
compiled with SQLAlchemy's mssql dialect (as the adapter's engine compiles it) or parsed by sqlglot's
T-SQL parser, and checked clause by clause; and the values pyodbc hands over. Tests against a real
SQL Server, which run only when CDC_TEST_MSSQL_URL names one (``mssql+pyodbc://sa:...@host:1433/master
?driver=ODBC Driver 18 for SQL Server&TrustServerCertificate=yes``; the login must be able to create
databases) and are reported as skipped otherwise. No Docker engine, no SQL Server here: see README.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import struct
import uuid
from decimal import Decimal
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
import sqlglot
from sqlglot import exp

from cdc import state
from cdc.adapters.odbc import _connect, adapter, sql, types
from cdc.adapters.odbc._dialects import MSDialect_cdc_pyodbc
from cdc.errors import ConfigError

MSSQL_URL = os.environ.get("CDC_TEST_MSSQL_URL")
needs_server = pytest.mark.skipif(not MSSQL_URL, reason="no SQL Server: set CDC_TEST_MSSQL_URL to run against one")


def tsql(statement: str) -> exp.Expression:
    """One statement parsed as T-SQL (a parse error fails the test)."""
    (parsed,) = sqlglot.parse(statement, read="tsql", error_level=sqlglot.ErrorLevel.RAISE)
    return parsed


def dialect() -> MSDialect_cdc_pyodbc:
    return MSDialect_cdc_pyodbc()


# -- the SQL ----------------------------------------------------------------------------------------------
def test_merge_upserts_one_row_under_holdlock_by_the_key():
    statement = sql.merge("Bilag", ("firma", "nr"), ["firma", "nr", "beløp", "tekst"])
    parsed = tsql(statement)
    assert isinstance(parsed, exp.Merge) and statement.endswith(";")  # MERGE must end with a semicolon
    assert statement.startswith("MERGE [Bilag] WITH (HOLDLOCK) AS t USING (SELECT ? AS [firma], ? AS [nr], "
                                "? AS [beløp], ? AS [tekst]) AS s ON t.[firma] = s.[firma] AND t.[nr] = s.[nr] ")
    assert "WHEN MATCHED THEN UPDATE SET t.[beløp] = s.[beløp], t.[tekst] = s.[tekst] " in statement
    assert "WHEN NOT MATCHED THEN INSERT ([firma], [nr], [beløp], [tekst]) VALUES (s.[firma], s.[nr], " \
           "s.[beløp], s.[tekst]);" in statement
    assert statement.count("?") == 4  # one parameter per column, in column order


def test_merge_of_a_table_of_key_columns_only_inserts_what_is_missing():
    statement = sql.merge("keys", ("id",), ["id"])
    tsql(statement)
    assert "WHEN MATCHED" not in statement and "WHEN NOT MATCHED THEN INSERT ([id]) VALUES (s.[id]);" in statement


def test_names_are_bracket_quoted_with_brackets_doubled():
    statement = sql.merge("odd]name", ("k]",), ["k]", "v"])
    tsql(statement)
    assert "[odd]]name]" in statement and "[k]]]" in statement


def test_change_tracking_reads_changes_after_a_version_with_the_current_row():
    statement = sql.ct_changes("ordre", ("id",), ["id", "sum"], 500)
    assert "FROM CHANGETABLE(CHANGES [ordre], ?) AS ct LEFT JOIN [ordre] AS t ON t.[id] = ct.[id] " \
           "WHERE ct.SYS_CHANGE_VERSION <= ? " in statement
    assert "TOP" not in sql.ct_changes("ordre", ("id",), ["id", "sum"], None)
    assert statement.startswith("SELECT TOP (500) ct.SYS_CHANGE_VERSION AS ct_version, ct.SYS_CHANGE_OPERATION ")
    assert statement.endswith("ORDER BY ct.SYS_CHANGE_VERSION, ct.[id]")
    # sqlglot has no CHANGETABLE: the rest must parse with a table in its place.
    tsql(statement.replace("CHANGETABLE(CHANGES [ordre], ?)", "changes_placeholder"))
    tsql(sql.enable_change_tracking("ordre"))
    assert sql.CT_MIN_VALID == "SELECT CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(?))"


def test_a_change_tracking_read_ends_where_every_table_has_been_read_up_to():
    from cdc.adapters.odbc.source import cut
    assert cut(90, {"a": [5, 6], "b": [7]}, 3) == 90  # no table hit the limit: up to the current version
    assert cut(90, {"a": [5, 6, 8], "b": [7, 9, 9]}, 3) == 8  # a stopped at 8, b at 9: both whole up to 8
    assert cut(90, {"a": [4, 4, 4], "b": []}, 3) == 4  # one big transaction: read whole (no read stands still)


def test_rowversion_reads_a_range_in_rowversion_order():
    statement = sql.rowversion_read("ordre", "rv", ["id", "rv", "sum"], 1000)
    parsed = tsql(statement)
    assert isinstance(parsed, exp.Select)
    assert "[rv] > CAST(CAST(? AS BIGINT) AS BINARY(8)) AND [rv] < CAST(CAST(? AS BIGINT) AS BINARY(8))" in statement
    assert statement.endswith("ORDER BY [rv]") and "TOP (1000)" in statement
    for text in (sql.DBTS, sql.MIN_ACTIVE_ROWVERSION, sql.CT_CURRENT, sql.CT_DATABASE, sql.CT_TABLES,
                 sql.SELECT_PERMISSION, sql.CT_PERMISSION, f"SELECT {sql.MSSQL_CLOCK}"):
        tsql(text)


COLUMNS = [("firma", "int", "int"), ("nr", "bigint", "bigint"), ("beløp", "decimal", "decimal"),
           ("sted", "geography", "geography"), ("odd]name", "nvarchar", "nvarchar")]


def test_the_capture_trigger_logs_every_row_of_a_statement_with_the_epoch_under_a_held_lock():
    statement = sql.create_trigger("Bilag", ("firma", "nr"), COLUMNS)
    assert statement.startswith("CREATE OR ALTER TRIGGER [_cdc_Bilag] ON [Bilag] AFTER INSERT, UPDATE, DELETE AS "
                                "BEGIN SET NOCOUNT ON; ")
    assert statement.endswith("; END")
    # sqlglot parses no CREATE TRIGGER: its body's statements, each.
    body = statement.split(" AS BEGIN ", 1)[1].rsplit(" END", 1)[0]
    steps = body.rstrip(";").split("; ")
    assert steps[0] == "SET NOCOUNT ON" and steps[1].endswith(" */ IF NOT EXISTS (SELECT 1 FROM inserted) AND NOT "
                                                              "EXISTS (SELECT 1 FROM deleted) RETURN")
    assert isinstance(tsql(steps[-2]), exp.Select) and isinstance(tsql(steps[-1]), exp.Insert)
    # The epoch is read under a shared lock the writer's transaction holds to its end (HOLDLOCK): a seal's
    # exclusive lock waits for it, so every change of one transaction carries one epoch.
    assert "SELECT @cdc_epoch = n FROM _cdc_epoch WITH (HOLDLOCK, ROWLOCK) WHERE k = 1; " in statement
    # inserted and deleted are paired by the whole key; a row in one only is an insert or a delete.
    assert "FROM inserted AS i FULL OUTER JOIN deleted AS d ON i.[firma] = d.[firma] AND i.[nr] = d.[nr]; END" in statement
    assert "CASE WHEN d.[firma] IS NULL THEN 'insert' WHEN i.[firma] IS NULL THEN 'delete' ELSE 'update' END" in statement
    # Images as JSON objects with NULLs kept; a CLR type as its text; names quoted, brackets doubled.
    assert "(SELECT i.[firma] AS [firma], i.[nr] AS [nr], i.[beløp] AS [beløp], i.[sted].ToString() AS [sted], " \
           "i.[odd]]name] AS [odd]]name] FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES)" in statement
    assert "N'Bilag'" in sql.create_trigger("Bilag", ("nr",), COLUMNS) and "N'O''Neil'" in \
        sql.create_trigger("O'Neil", ("nr",), COLUMNS)
    # The trigger's text carries a digest of the columns it was made for: another set is a stale trigger.
    assert sql.logged_digest(statement) == sql.columns_digest(COLUMNS)
    assert sql.columns_digest(COLUMNS[:-1]) != sql.columns_digest(COLUMNS)
    assert sql.columns_digest([("nr", "int", "int")]) != sql.columns_digest([("nr", "bigint", "bigint")])
    assert sql.logged_digest("CREATE TRIGGER x ON t AFTER INSERT AS SELECT 1") is None


def test_the_changelog_state_and_reads_are_sql_server_statements():
    for statement in [*sql.CREATE_STATE, *sql.DROP_STATE, sql.CHANGELOG_MARK, sql.CURRENT_EPOCH, sql.SEAL,
                      sql.LOGGED_SINCE, sql.PENDING, sql.PURGEABLE, sql.PURGE, sql.TRIGGERS, sql.COLUMNS,
                      sql.OLDEST_TRANSACTION, sql.drop_trigger("Bilag"), sql.read_changelog(3)]:
        tsql(statement)
    for text in (sql.REGISTER, sql.ACKNOWLEDGE):  # SQLAlchemy text: its binds become ? as the engine sends them
        tsql(str(sa.text(text).compile(dialect=dialect())))
    assert sql.SEAL == "UPDATE _cdc_epoch SET n = n + 1 OUTPUT deleted.n WHERE k = 1"
    assert sql.enable_trigger("O]k") == "ENABLE TRIGGER [_cdc_O]]k] ON [O]]k]"  # sqlglot parses no ENABLE TRIGGER
    assert sql.read_changelog(2).endswith("WHERE epoch > ? AND epoch <= ? AND tbl IN (?, ?) ORDER BY epoch, id")
    assert sql.PURGE.startswith("DELETE TOP (5000) FROM _cdc_changelog WHERE epoch <= ?")


def test_values_logged_by_for_json_are_read_as_pyodbc_reads_the_column():
    import json
    image = json.loads('{"n": 12345678901234567890.0123456789, "i": 5, "m": 12.3456, "f": 1.5, "b": true, '
                       '"raw": "AP8=", "d2": "2024-03-31T22:30:15.1234567", "off": "2024-03-31T22:30:15.1234567+02:00", '
                       '"t": "23:59:59.9999999", "day": "2024-02-29", "g": "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", '
                       '"z": null}', parse_float=Decimal)
    read = {name: types.logged_value(kind)(image[name]) for name, kind in (
        ("n", "decimal"), ("i", "decimal"), ("m", "money"), ("f", "float"), ("b", "bit"), ("raw", "varbinary"),
        ("d2", "datetime2"), ("off", "datetimeoffset"), ("t", "time"), ("day", "date"), ("g", "uniqueidentifier"),
        ("z", "int"))}
    assert read["n"] == Decimal("12345678901234567890.0123456789") and read["i"] == Decimal(5)
    assert read["m"] == Decimal("12.3456") and read["f"] == 1.5 and isinstance(read["f"], float)
    assert read["b"] is True and read["raw"] == b"\x00\xff" and read["z"] is None
    assert read["d2"] == dt.datetime(2024, 3, 31, 22, 30, 15, 123456)
    assert read["off"] == dt.datetime(2024, 3, 31, 20, 30, 15, 123456, tzinfo=dt.timezone.utc)
    assert read["off"].utcoffset() == dt.timedelta(hours=2)
    assert read["t"] == dt.time(23, 59, 59, 999999) and read["day"] == dt.date(2024, 2, 29)
    assert read["g"] == "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11"


def test_state_tables_keep_unicode_and_exact_times_on_sql_server():
    compiled = {t.name: str(sa.schema.CreateTable(t).compile(dialect=dialect())) for t in state.metadata.sorted_tables}
    text = "\n".join(compiled.values())
    assert not re.search(r"\b(VARCHAR|TEXT|NTEXT|IMAGE|DATETIME)\b(?!2|OFFSET)", text.replace("NVARCHAR", "")), text
    assert "[key] NVARCHAR(max) NOT NULL" in compiled["cdc_audit_log"]
    assert "applied_at DATETIMEOFFSET NOT NULL" in compiled["cdc_audit_log"]
    for table in state.metadata.sorted_tables:  # an index key may not be (N)VARCHAR(max)
        for column in [*table.primary_key.columns, *(c for i in table.indexes for c in i.columns)]:
            assert "max" not in str(column.type.compile(dialect=dialect())), (table.name, column.name)


def test_cdc_init_declares_source_types_as_sql_server_keeps_them():
    target = adapter.target("mssql+pyodbc://cdc:pw@127.0.0.1:9/ledger")
    source = sa.Table("items", sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True),
                      sa.Column("amount", sa.Numeric(30, 10)), sa.Column("at", sa.DateTime(timezone=True)),
                      sa.Column("local", sa.DateTime()), sa.Column("day", sa.Date), sa.Column("note", sa.Text),
                      sa.Column("code", sa.String(20)), sa.Column("raw", sa.LargeBinary), sa.Column("flag", sa.Boolean))
    table = target.table_definition("items", list(source.columns), ("id",), "postgresql")
    ddl = str(sa.schema.CreateTable(table).compile(dialect=target.engine.dialect))
    for declared in ("id BIGINT NOT NULL", "amount NUMERIC(30, 10) NULL", "at DATETIMEOFFSET NULL",
                     "local DATETIME2 NULL", "day DATE NULL", "note NVARCHAR(max) NULL", "code NVARCHAR(20) NULL",
                     "raw VARBINARY(max) NULL", "flag BIT NULL", "PRIMARY KEY (id)"):
        assert declared in ddl, ddl
    assert "IDENTITY" not in ddl  # the source's keys are written, never generated
    target.close()


def test_rows_read_in_the_apply_transaction_are_locked_by_hints():
    target = adapter.target("mssql+pyodbc://cdc:pw@127.0.0.1:9/ledger")
    table = sa.Table("items", sa.MetaData(), sa.Column("id", sa.BigInteger, primary_key=True), sa.Column("v", sa.Text))
    text = str(target.locked_select(table, ("id",), [(1,), (2,)]).compile(dialect=target.engine.dialect))
    assert "FROM items WITH (UPDLOCK, HOLDLOCK)" in text and "FOR UPDATE" not in text
    target.close()


# -- URLs and connection strings ------------------------------------------------------------------------
def test_a_sql_server_url_becomes_the_connection_string_microsofts_driver_reads():
    place = _connect.reach("mssql+pyodbc://sa:p%3Bw%7D@db.example:1433/erp?TrustServerCertificate=yes")
    assert place.dialect == "mssql"
    assert place.connection_string == ("DRIVER={ODBC Driver 18 for SQL Server};Server=db.example,1433;Database=erp;"
                                       "UID=sa;PWD={p;w}}};TrustServerCertificate=yes")
    assert place.server == ("mssql", "db.example", 1433, "erp")


@pytest.mark.parametrize("url, dialect", [
    ("odbc://u@h:5432/db?driver=PostgreSQL Unicode", "postgresql"),
    ("odbc://u@h:3306/db?driver=MariaDB Unicode", "mysql"),
    ("odbc:////srv/data/erp.db?driver=SQLite3", "sqlite"),
    ("odbc://u@h/db?driver=FreeTDS", "mssql"),
    ("odbc://u@h/db?driver=Vendor X&dialect=postgresql", "postgresql"),
    ("odbc:///?odbc_connect=DRIVER%3D%7BMariaDB+Unicode%7D%3BServer%3Dh%3BPWD%3Dx", "mysql"),
])
def test_an_odbc_url_says_which_database_it_reaches(url, dialect):
    assert _connect.reach(url).dialect == dialect


def test_an_odbc_url_that_does_not_say_which_database_is_a_config_error_naming_the_fix():
    with pytest.raises(ConfigError, match="add dialect=postgresql, mysql, sqlite or mssql"):
        _connect.reach("odbc://u:secret@/?dsn=NOT_IN_ODBC_INI")  # a DSN odbc.ini does not know: no driver name
    with pytest.raises(ConfigError, match="ODBC driver 'Vendor X' is not installed on this machine"):
        _connect.reach("odbc://u:secret@h/db?driver=Vendor X")
    with pytest.raises(ConfigError, match=r"name the ODBC driver \(\?driver=") as raised:
        _connect.reach("odbc://u:secret@h/db?dialect=postgresql")
    assert "secret" not in str(raised.value)


def test_a_sql_server_trigger_source_is_made_without_connecting():
    from cdc.adapters.odbc.trigger import MssqlTriggerSource
    pair = SimpleNamespace(name="p", capture="trigger", source_timezone="UTC", timestamp=None)
    source = adapter.source("mssql+pyodbc://cdc:pw@127.0.0.1:9/erp", pair)
    assert isinstance(source, MssqlTriggerSource) and source.format_position(7) == "epoch 7"
    assert "trigger" in source.capabilities.capture_modes
    source.close()


def test_a_source_of_a_capture_mode_the_dialect_lacks_is_refused_by_name():
    pair = SimpleNamespace(name="p", capture="change_tracking", source_timezone="UTC", timestamp=None)
    with pytest.raises(Exception, match="capture change_tracking is not available for a postgresql database"):
        adapter.source("odbc://u@h/db?driver=PostgreSQL Unicode", pair)


# -- values ---------------------------------------------------------------------------------------------
def test_datetimeoffset_is_read_with_its_offset_and_written_with_it():
    raw = struct.pack("<6hI2h", 2024, 3, 31, 22, 30, 15, 123456700, 2, 0)
    assert types.read_datetimeoffset(raw) == dt.datetime(2024, 3, 31, 22, 30, 15, 123456,
                                                         tzinfo=dt.timezone(dt.timedelta(hours=2)))
    column = sa.Column("at", sa.dialects.mssql.DATETIMEOFFSET())
    write = types.writer("mssql", column)
    oslo = dt.datetime(2024, 3, 31, 22, 30, 15, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert write(oslo) == "2024-03-31 22:30:15.000005+02:00"
    assert write(dt.datetime(2024, 1, 1)) == "2024-01-01 00:00:00+00:00"  # naive: UTC


def test_values_pyodbc_would_bind_wrong_are_bound_as_their_instant():
    aware = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    plain = types.writer("mssql", sa.Column("at", sa.DateTime(timezone=True)))
    assert plain(aware) == dt.datetime(2024, 6, 1, 10, 0)  # pyodbc would drop the +02:00 and store 12:00
    assert plain(Decimal("0.1")) == Decimal("0.1") and plain(uuid.UUID(int=1)) == str(uuid.UUID(int=1))
    read = types.reader("mssql", sa.Column("rv", sa.dialects.mssql.ROWVERSION()))
    assert read(bytearray(b"\x00\x01")) == b"\x00\x01"


# -- a real SQL Server ----------------------------------------------------------------------------------
@pytest.fixture
def mssql_database():
    """A fresh database on the SQL Server CDC_TEST_MSSQL_URL names, dropped afterwards."""
    import pyodbc
    name = f"cdc_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    place = _connect.reach(MSSQL_URL)
    admin = pyodbc.connect(place.connection_string, autocommit=True)
    admin.execute(f"CREATE DATABASE [{name}]")
    admin.execute(f"ALTER DATABASE [{name}] SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 1 DAYS, AUTO_CLEANUP = ON)")
    url = sa.engine.make_url(MSSQL_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    admin.execute(f"ALTER DATABASE [{name}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE")
    admin.execute(f"DROP DATABASE [{name}]")


def _execute(url: str, *statements):
    import pyodbc
    with pyodbc.connect(_connect.reach(url).connection_string, autocommit=True) as conn:
        for statement in statements:
            if isinstance(statement, tuple):
                conn.execute(*statement)
            else:
                conn.execute(statement)


def _config(ws, source: str, target: str, capture: str) -> None:
    extra = "    timestamp: {column: changed_at}\n" if capture == "timestamp" else ""
    ws.config.write_text(f"connections:\n  src: \"{source}\"\n  dst: \"{target}\"\npairs:\n  p:\n    source: src\n"
                         f"    target: dst\n    capture: {capture}\n{extra}    tables: [bilag]\n", encoding="utf-8")


BILAG = ("CREATE TABLE bilag (id BIGINT PRIMARY KEY, belop DECIMAL(30,10), gebyr MONEY, tekst NVARCHAR(200), "
         "bokfort DATETIMEOFFSET(6), endret DATETIME2(6), changed_at DATETIME2(6) NOT NULL DEFAULT SYSUTCDATETIME(), "
         "rv ROWVERSION)")


@needs_server
@pytest.mark.parametrize("capture", ["rowversion", "change_tracking", "timestamp", "trigger"])
def test_a_sql_server_source_feeds_a_sqlite_ledger_exactly(ws, mssql_database, capture):
    _execute(mssql_database, BILAG, ("INSERT INTO bilag (id, belop, gebyr, tekst, bokfort, endret) VALUES "
                                     "(?, ?, ?, ?, ?, ?)", 1, Decimal("12345678901234567890.0123456789"),
                                     Decimal("12.3456"), "Blåbær ☕ 😀", "2024-03-31 22:30:15.123456 +02:00",
                                     dt.datetime(2024, 3, 31, 22, 30, 15, 123456)))
    target = f"sqlite:///{ws.root / 'ledger.db'}"
    _config(ws, mssql_database, target, capture)
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    _execute(mssql_database, ("UPDATE bilag SET belop = ?, tekst = ?, changed_at = SYSUTCDATETIME() WHERE id = 1",
                              Decimal("-0.0000000001"), "Ærlig ☕"),
             ("INSERT INTO bilag (id, belop, tekst) VALUES (2, 1, N'ny')"))
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    check = ws.cdc("reconcile", str(ws.config))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "bilag" in check.stdout and "equal" in check.stdout.lower(), check.stdout


@needs_server
def test_sql_server_trigger_capture_applies_whole_transactions_key_changes_and_nothing_rolled_back(ws, mssql_database):
    import pyodbc
    import sqlite3
    _execute(mssql_database, "CREATE TABLE bilag (id BIGINT PRIMARY KEY, belop DECIMAL(30,10), tekst NVARCHAR(200))",
             "INSERT INTO bilag VALUES (1, 1, N'en'), (2, 2, N'to')")
    target = ws.root / "ledger.db"
    _config(ws, mssql_database, f"sqlite:///{target}", "trigger")
    for command in ("init", "install", "run --once"):
        result = ws.cdc(*command.split(), str(ws.config))
        assert result.returncode == 0, result.stdout + result.stderr
    with pyodbc.connect(_connect.reach(mssql_database).connection_string) as conn:
        conn.execute("INSERT INTO bilag VALUES (3, 3.5, N'tre ☕'), (4, -0.0000000001, NULL)")
        conn.execute("UPDATE bilag SET id = 10, tekst = N'ti' WHERE id = 1")  # a key change: delete 1, insert 10
        conn.execute("UPDATE bilag SET belop = belop * 2")
        conn.commit()
        conn.execute("DELETE FROM bilag WHERE id = 2")
        conn.rollback()  # never applied
        conn.execute("DELETE FROM bilag WHERE id = 4")
        conn.commit()
        want = [tuple(r) for r in conn.execute("SELECT id, belop, tekst FROM bilag ORDER BY id")]
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(target) as conn:
        have = [(i, Decimal(str(b)), t) for i, b, t in conn.execute("SELECT id, belop, tekst FROM bilag ORDER BY id")]
        audited = conn.execute("SELECT count(*) FROM cdc_audit_log WHERE op <> 'snapshot'").fetchone()[0]
    assert have == want
    assert audited == 2 + 2 + 4 + 1  # inserts, the key change as delete + insert, 4 updates, a delete
    doctor = ws.cdc("doctor", str(ws.config))
    assert doctor.returncode == 0 and "bilag: capture triggers installed" in doctor.stdout, doctor.stdout
    _execute(mssql_database, "ALTER TABLE bilag ADD note NVARCHAR(20)")
    stale = ws.cdc("doctor", str(ws.config))
    assert stale.returncode != 0 and "logs other columns than the table has now" in stale.stdout, stale.stdout


@needs_server
def test_a_sql_server_target_gets_exact_decimals_and_unicode_by_merge(ws, mssql_database):
    import sqlite3
    source = ws.root / "erp.db"
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE bilag (id INTEGER PRIMARY KEY, belop TEXT, tekst TEXT)")
        conn.execute("INSERT INTO bilag VALUES (1, '12345678901234567890.0123456789', 'Blåbær ☕ 😀')")
    ws.config.write_text(f"connections:\n  src: sqlite:///{source}\n  dst: \"{mssql_database}\"\npairs:\n  p:\n"
                         "    source: src\n    target: dst\n    tables: [bilag]\n", encoding="utf-8")
    _execute(mssql_database, "CREATE TABLE bilag (id BIGINT PRIMARY KEY, belop DECIMAL(30,10), tekst NVARCHAR(200))")
    for command in ("init", "install"):
        assert ws.cdc(command, str(ws.config)).returncode == 0
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    with sqlite3.connect(source) as conn:
        conn.execute("UPDATE bilag SET belop = '-0.0000000001', tekst = 'Ærlig ☕' WHERE id = 1")
        conn.execute("INSERT INTO bilag VALUES (2, '1', 'ny')")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    import pyodbc
    with pyodbc.connect(_connect.reach(mssql_database).connection_string) as conn:
        rows = conn.execute("SELECT id, belop, tekst FROM bilag ORDER BY id").fetchall()
    assert [tuple(r) for r in rows] == [(1, Decimal("-0.0000000001"), "Ærlig ☕"), (2, Decimal("1"), "ny")]


@needs_server
def test_an_expired_change_tracking_version_stops_the_pair_saying_to_copy_again(mssql_database):
    _execute(mssql_database, BILAG, "ALTER TABLE bilag ENABLE CHANGE_TRACKING",
             "INSERT INTO bilag (id, belop) VALUES (1, 1)")
    pair = SimpleNamespace(name="p", capture="change_tracking", source_timezone="UTC", timestamp=None)
    source = adapter.source(mssql_database, pair)
    source.watch({"bilag": ("id",)})
    with source.engine.connect() as conn:
        oldest = conn.exec_driver_sql(sql.CT_MIN_VALID, ("bilag",)).scalar()
    if not oldest:
        pytest.skip("the change tables have not been cleaned up yet: no version is expired")
    with pytest.raises(Exception, match="cdc run --resnapshot"):
        source.check_position({"version": int(oldest) - 1})
    source.close()

