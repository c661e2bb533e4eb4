"""`cdc init` across database kinds: names and types the target can hold, and all tables or none."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa
from test_mysql_source import mexec, pexec


def config(ws, source: str, target: str, tables: str, capture: str = "trigger") -> None:
    ws.config.write_text(f"connections:\n  src: {source}\n  dst: {target}\npairs:\n  p:\n    source: src\n"
                         f"    target: dst\n    capture: {capture}\n    tables: {tables}\n", encoding="utf-8")


def cdc_ok(ws, *args: str) -> str:
    result = ws.cdc(*args, str(ws.config))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parametrize("capture", ["binlog", "trigger"])
def test_mariadb_backtick_name_and_enum_make_postgresql_tables_that_sync(ws, mysql_url, pg_url, capture):
    """A column named na`me keeps its one backtick; ENUM and SET become text (the README's word)."""
    mexec(mysql_url, "CREATE TABLE a_named (id INT PRIMARY KEY, `na``me` VARCHAR(20), `two````ticks` INT)")
    mexec(mysql_url, "CREATE TABLE b_enum (id INT PRIMARY KEY, state ENUM('open','paid') NOT NULL, "
                     "tags SET('a','b','c'), made YEAR, flags BIT(8))")
    mexec(mysql_url, "INSERT INTO a_named VALUES (1, 'Åse', 7)")
    mexec(mysql_url, "INSERT INTO b_enum VALUES (1, 'paid', 'c,a', 2024, b'101')")
    config(ws, mysql_url, pg_url, "[a_named, b_enum]", capture)
    out = cdc_ok(ws, "init")
    assert "a_named: created" in out and "b_enum: created" in out
    columns = pexec(pg_url, "SELECT table_name, column_name, data_type FROM information_schema.columns "
                            "WHERE table_schema = 'public' AND table_name IN ('a_named', 'b_enum') "
                            "ORDER BY table_name, ordinal_position")
    assert columns == [("a_named", "id", "integer"), ("a_named", "na`me", "character varying"),
                       ("a_named", "two``ticks", "integer"), ("b_enum", "id", "integer"),
                       ("b_enum", "state", "text"), ("b_enum", "tags", "text"), ("b_enum", "made", "smallint"),
                       ("b_enum", "flags", "bigint")]
    cdc_ok(ws, "install")
    assert "snapshot 2 rows" in cdc_ok(ws, "run", "--once")
    mexec(mysql_url, "INSERT INTO a_named VALUES (2, 'Øystein', 8)")
    mexec(mysql_url, "UPDATE b_enum SET state = 'open', tags = 'b' WHERE id = 1")
    assert "2 changes applied" in cdc_ok(ws, "run", "--once")
    assert pexec(pg_url, 'SELECT id, "na`me", "two``ticks" FROM a_named ORDER BY id') == [(1, "Åse", 7),
                                                                                         (2, "Øystein", 8)]
    assert pexec(pg_url, "SELECT id, state, tags, made, flags FROM b_enum") == [(1, "open", "b", 2024, 5)]


def test_sqlite_text_and_blob_become_longtext_and_longblob_in_mariadb(ws, mysql_url):
    """SQLite declares no length: a MariaDB table made by `cdc init` must hold any value it can."""
    ws.sql(ws.source, "CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, raw BLOB, code VARCHAR, "
                      "note VARCHAR(30));\n"
                      "CREATE TABLE codes (code TEXT PRIMARY KEY, label TEXT NOT NULL)")
    config(ws, "sqlite:///source.db", mysql_url, "[docs, codes]")
    cdc_ok(ws, "init")
    columns = mexec(mysql_url, "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, EXTRA FROM information_schema.COLUMNS "
                               "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ('docs', 'codes') "
                               "ORDER BY TABLE_NAME, ORDINAL_POSITION")
    assert [tuple(c) for c in columns] == [
        ("codes", "code", "varchar(255)", ""), ("codes", "label", "longtext", ""),
        ("docs", "id", "bigint(20)", ""), ("docs", "body", "longtext", ""), ("docs", "raw", "longblob", ""),
        ("docs", "code", "longtext", ""), ("docs", "note", "varchar(30)", "")]  # the key generates nothing


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url.replace("mysql://", "mysql+pymysql://").replace("postgresql://",
                                                                                   "postgresql+psycopg://"))
    try:
        return {t for t in sa.inspect(engine).get_table_names() if not t.startswith("cdc_")}
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_init_creates_no_table_when_a_later_one_cannot_be_created(ws, kind, request):
    """A type the target cannot declare (checked before anything is made: PostgreSQL's tsvector in
    SQLite) or a table the server refuses (PostgreSQL and SQLite: one transaction; MariaDB, whose
    CREATE commits itself: what was made is dropped again)."""
    if kind == "sqlite":
        source, target = request.getfixturevalue("pg_url"), "sqlite:///target.db"
        pexec(source, "CREATE TABLE a_ok (id integer PRIMARY KEY, amount numeric(18,2))")
        pexec(source, "CREATE TABLE b_bad (id integer PRIMARY KEY, words tsvector)")
        named = "target table b_bad column words"
    else:
        source = "sqlite:///source.db"
        if kind == "postgresql":
            target, bad = request.getfixturevalue("pg_url"), "id INTEGER PRIMARY KEY, amount NUMERIC(2000,2)"
        else:
            target, bad = request.getfixturevalue("mysql_url"), "code VARCHAR(2000) PRIMARY KEY, amount NUMERIC(18,2)"
        ws.sql(ws.source, f"CREATE TABLE a_ok (id INTEGER PRIMARY KEY, amount NUMERIC(18,2));\n"
                          f"CREATE TABLE b_bad ({bad})")
        named = "target table b_bad: the target refused to create it"
    config(ws, source, target, "[a_ok, b_bad]")
    result = ws.cdc("init", str(ws.config))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and named in result.stderr, result.stderr
    url = f"sqlite:///{ws.target}" if kind == "sqlite" else target
    assert _tables(url) == set()
    # With the bad table left out, init makes the good one.
    config(ws, source, target, "[a_ok]")
    assert "a_ok: created" in cdc_ok(ws, "init")
    assert _tables(url) == {"a_ok"}


def test_init_from_postgresql_text_and_bytea_into_mariadb(ws, pg_url, mysql_url):
    """PostgreSQL text/bytea have no length either: LONGTEXT/LONGBLOB; a text key VARCHAR(255)."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (code text PRIMARY KEY, body text, raw bytea, kind varchar(20))")
    config(ws, pg_url, mysql_url, "[notes]")
    cdc_ok(ws, "init")
    columns = mexec(mysql_url, "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS "
                               "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'notes' ORDER BY ORDINAL_POSITION")
    assert [tuple(c) for c in columns] == [("code", "varchar(255)"), ("body", "longtext"), ("raw", "longblob"),
                                           ("kind", "varchar(20)")]


def test_init_of_several_pairs_into_one_mariadb_creates_nothing_when_one_table_is_refused(ws, mysql_url):
    """The tables of every pair of a target are made together: the second pair's refused table
    takes the first pair's table with it (MariaDB's CREATE commits itself: it is dropped again)."""
    ws.sql(ws.source, "CREATE TABLE a_ok (id INTEGER PRIMARY KEY, amount NUMERIC(18,2));\n"
                      "CREATE TABLE b_bad (code VARCHAR(2000) PRIMARY KEY, amount NUMERIC(18,2))")
    ws.config.write_text(f"connections:\n  src: sqlite:///source.db\n  dst: {mysql_url}\npairs:\n"
                         "  one:\n    source: src\n    target: dst\n    tables: [a_ok]\n"
                         "  two:\n    source: src\n    target: dst\n    tables: [b_bad]\n", encoding="utf-8")
    result = ws.cdc("init", str(ws.config))
    assert result.returncode == 1 and "target table b_bad: the target refused to create it" in result.stderr, \
        result.stdout + result.stderr
    assert _tables(mysql_url) == set()
    assert "a_ok: created" in cdc_ok(ws, "init", "--pair", "one")
    assert _tables(mysql_url) == {"a_ok"}


@pytest.mark.parametrize("declared", ["TEXT", "VARCHAR(20)"])
def test_text_keys_differing_in_case_or_trailing_spaces_stay_rows_of_their_own_in_mariadb(ws, mysql_url, declared):
    """MariaDB's default collation makes 'a', 'A' and 'a ' one key: a table `cdc init` made kept 2 of
    4 rows (exit 0), and deleting 'A' at the source deleted the merged row."""
    ws.sql(ws.source, f"CREATE TABLE codes (code {declared} PRIMARY KEY, label TEXT);"
                      "INSERT INTO codes VALUES ('a', 'lower'), ('A', 'upper'), ('a ', 'space'), ('b', 'b')")
    config(ws, "sqlite:///source.db", mysql_url, "[codes]")
    for command in ("init", "install"):
        cdc_ok(ws, command)
    assert "snapshot 4 rows" in cdc_ok(ws, "run", "--once")
    ws.sql(ws.source, "DELETE FROM codes WHERE code = 'A'; UPDATE codes SET label = 'LOWER' WHERE code = 'a'")
    cdc_ok(ws, "run", "--once")
    target = sorted((code, label) for code, label in mexec(mysql_url, "SELECT code, label FROM codes"))
    assert target == [("a", "LOWER"), ("a ", "space"), ("b", "b")]
    assert "EQUAL" in cdc_ok(ws, "reconcile")


def test_unsigned_integers_get_a_postgresql_column_that_holds_their_whole_range(ws, mysql_url, pg_url):
    """BIGINT UNSIGNED became bigint: the pair then stopped for ever on values over 2^63 - 1."""
    mexec(mysql_url, "CREATE TABLE u (id INT PRIMARY KEY, big BIGINT UNSIGNED, mid INT UNSIGNED, "
                     "small SMALLINT UNSIGNED, tiny TINYINT UNSIGNED)")
    mexec(mysql_url, "INSERT INTO u VALUES (1, 18446744073709551615, 4294967295, 65535, 255)")
    config(ws, mysql_url, pg_url, "[u]", "binlog")
    cdc_ok(ws, "init")
    columns = pexec(pg_url, "SELECT column_name, data_type, numeric_precision FROM information_schema.columns "
                            "WHERE table_name = 'u' ORDER BY ordinal_position")
    assert [(c, t) for c, t, _ in columns] == [("id", "integer"), ("big", "numeric"), ("mid", "bigint"),
                                               ("small", "integer"), ("tiny", "integer")]
    assert "snapshot 1 rows" in cdc_ok(ws, "run", "--once")
    mexec(mysql_url, "INSERT INTO u VALUES (2, 9223372036854775808, 2147483648, 0, 0)")
    cdc_ok(ws, "run", "--once")
    assert pexec(pg_url, "SELECT id, big, mid, small, tiny FROM u ORDER BY id") == [
        (1, 18446744073709551615, 4294967295, 65535, 255), (2, 9223372036854775808, 2147483648, 0, 0)]


def test_timestamps_keep_their_microseconds_in_mariadb_and_a_column_that_would_round_refuses_them(ws, mysql_url):
    """A bare DATETIME keeps no fraction of a second, and MariaDB rounds one away silently: `cdc init`
    declares DATETIME(6), and a hand-made DATETIME(0) column refuses a value it would round, naming
    the row and column, where the value used to arrive rounded with the run exiting 0."""
    ws.sql(ws.source, "CREATE TABLE stamps (id INTEGER PRIMARY KEY, at DATETIME NOT NULL);\n"
                      "INSERT INTO stamps VALUES (1, '2026-01-01 10:00:00.600000'), (2, '2026-01-01 10:00:01');\n"
                      "CREATE TABLE coarse (id INTEGER PRIMARY KEY, at DATETIME NOT NULL);\n"
                      "INSERT INTO coarse VALUES (1, '2026-01-01 10:00:00.600000')")
    config(ws, "sqlite:///source.db", mysql_url, "[stamps]")
    cdc_ok(ws, "init")
    assert mexec(mysql_url, "SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                            "AND TABLE_NAME = 'stamps' AND COLUMN_NAME = 'at'") == [("datetime(6)",)]
    cdc_ok(ws, "install")
    cdc_ok(ws, "run", "--once")
    assert [(i, str(at)) for i, at in mexec(mysql_url, "SELECT id, at FROM stamps ORDER BY id")] == [
        (1, "2026-01-01 10:00:00.600000"), (2, "2026-01-01 10:00:01")]
    mexec(mysql_url, "CREATE TABLE coarse (id INT PRIMARY KEY, at DATETIME NOT NULL)")
    config(ws, "sqlite:///source.db", mysql_url, "[stamps, coarse]")
    cdc_ok(ws, "install")
    result = ws.cdc("run", "--once", str(ws.config))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "table coarse key [1] column at: 2026-01-01 10:00:00.600000 has more than 0 fractional second digits" \
        in result.stderr, result.stderr
    assert mexec(mysql_url, "SELECT count(*) FROM coarse") == [(0,)]
