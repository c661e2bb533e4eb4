"""Passwords with every URL delimiter: they connect, and no part of them reaches any output.

The real PostgreSQL and MariaDB test servers get a user whose password holds ``@ : / % # ? &``;
the real `cdc` commands (check, init, install, run at -vv, status, and failures with a wrong host,
port or password) are run against them and every byte they print is searched for every piece
of the password.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cdc.config import load_config
from test_reconcile import database  # noqa: F401 - a fixture

#: Every URL delimiter, and between them pieces that must never be printed. ``%41`` would turn
#: into ``A`` if anything decoded the password twice.
PASSWORD = "Kx7q@Lm2w:Pz9r/Tb4v%41Jn6h#Qs3c?Wd8f&Yg5k"


def pieces(secret: str) -> set[str]:
    """Every run of 4 characters without a delimiter in ``secret``: none may appear in output."""
    parts = re.split(r"[@:/%#?&]", secret)
    return {part[i:i + 4] for part in parts for i in range(len(part) - 3)}


def assert_no_secret(*outputs: str) -> None:
    text = "\n".join(outputs)
    leaked = sorted(p for p in pieces(PASSWORD) if p in text)
    assert not leaked, f"password pieces {leaked} in output:\n{text[-3000:]}"


def write_config(ws, connections: str, pairs: str) -> None:
    ws.config.write_text(f"connections:\n{connections}pairs:\n{pairs}", encoding="utf-8")


# -- without a server: the URL is built right --------------------------------------------------
def test_a_password_from_env_is_url_encoded_into_the_user_password_part(ws, monkeypatch):
    monkeypatch.setenv("PW", PASSWORD)
    monkeypatch.setenv("DB_USER", "led:ger")
    write_config(ws, "  src: sqlite:///s.db\n  dst: postgresql://${DB_USER}:${PW}@db.example.no:5433/${DB:-regnskap}\n",
                 "  p: {source: src, target: dst, tables: [t]}\n")
    url = make_url(load_config(ws.config).pairs["p"].target.url)
    assert (url.username, url.password, url.host, url.port, url.database) == \
        ("led:ger", PASSWORD, "db.example.no", 5433, "regnskap")


def test_the_issues_password_with_an_at_sign_no_longer_becomes_part_of_the_host(ws, monkeypatch):
    monkeypatch.setenv("PW", "abc@SECRETPART")
    write_config(ws, "  src: sqlite:///s.db\n  dst: postgresql://ledger:${PW}@127.0.0.1:1/regnskap\n",
                 "  p: {source: src, target: dst, tables: [t]}\n")
    assert make_url(load_config(ws.config).pairs["p"].target.url).host == "127.0.0.1"
    ws.sql(ws.source.with_name("s.db"), "CREATE TABLE t (id INTEGER PRIMARY KEY);")
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 1 and "127.0.0.1" in result.stderr, result.stderr
    assert "SECRET" not in result.stdout + result.stderr and "abc" not in result.stdout + result.stderr


def test_a_whole_url_from_env_is_taken_as_it_is(ws, monkeypatch):
    monkeypatch.setenv("LEDGER_URL", "postgresql://ledger:pa%40ss@db/regnskap")
    write_config(ws, "  src: sqlite:///s.db\n  dst: ${LEDGER_URL}\n", "  p: {source: src, target: dst, tables: [t]}\n")
    url = make_url(load_config(ws.config).pairs["p"].target.url)
    assert (url.password, url.host) == ("pa@ss", "db")


def test_connection_fields_build_the_url_and_mask_it(ws, monkeypatch):
    monkeypatch.setenv("PW", PASSWORD)
    write_config(ws, "  src: sqlite:///s.db\n  dst:\n    driver: postgresql\n    host: db.example.no\n    port: 5433\n"
                     "    user: ledger\n    password: ${PW}\n    database: regnskap\n    sslmode: require\n",
                 "  p: {source: src, target: dst, tables: [t]}\n")
    target = load_config(ws.config).pairs["p"].target
    url = make_url(target.url)
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database, dict(url.query)) == \
        ("postgresql+psycopg", "ledger", PASSWORD, "db.example.no", 5433, "regnskap", {"sslmode": "require"})
    assert target.masked == "postgresql+psycopg://ledger:***@db.example.no:5433/regnskap?sslmode=require"


def test_a_password_file_is_read_relative_to_the_config_without_its_line_break(ws):
    (ws.root / "secrets").mkdir()
    (ws.root / "secrets" / "ledger.pw").write_text(PASSWORD + "\n", encoding="utf-8")
    write_config(ws, "  src: sqlite:///s.db\n  dst: {driver: mariadb, host: db, user: ledger, "
                     "password_file: secrets/ledger.pw, database: regnskap}\n",
                 "  p: {source: src, target: dst, tables: [t]}\n")
    url = make_url(load_config(ws.config).pairs["p"].target.url)
    assert (url.drivername, url.password, url.host) == ("mysql+pymysql", PASSWORD, "db")


@pytest.mark.parametrize("connection, says", [
    ("{driver: postgresql, host: db, password: x, password_file: pw}",
     "connections.dst.password_file: give either password or password_file, not both"),
    ("{url: 'postgresql://db/x', host: db}", "connections.dst.host: give either a URL or fields (driver, host, ...), "
                                             "not both"),
    ("{host: db, password: x}", "connections.dst: needs a URL, or fields with driver: postgresql, mysql, mariadb or "
                                "sqlite"),
    ("{driver: postgresql, host: db, password: 12345678}", "connections.dst.password: must be text (write it in "
                                                           "quotes)"),
    ("{driver: mysql, host: db, sslmode: require}", "connections.dst.sslmode: sslmode is PostgreSQL's setting"),
    ("{driver: postgresql, host: db, password_file: missing.pw}", "connections.dst.password_file: cannot read "
                                                                 "password file"),
    ("'postgresql://ledger:Kx7q@Lm2w:Pz9r@db:5432/x'", "connections.dst: 'postgresql://***@db:5432/x' is not a "
                                                       "database URL"),
])
def test_connection_mistakes_are_refused_without_quoting_the_password(ws, connection, says):
    write_config(ws, f"  src: sqlite:///s.db\n  dst: {connection}\n", "  p: {source: src, target: dst, tables: [t]}\n")
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 2 and result.stderr.startswith(f"error: {says}"), result.stderr
    assert "Traceback" not in result.stderr
    assert_no_secret(result.stdout, result.stderr)
    assert "12345678" not in result.stderr


# -- against the real servers ------------------------------------------------------------------
def _pg_admin(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_secret(request, pg_server, pg_databases):
    """(url pieces) of a fresh database owned by a new role whose password is PASSWORD (or the
    fixture's parameter).

    When the server's pg_hba.conf can be written (the local test cluster trusts everyone), the
    role must give its password (scram-sha-256), so a wrong one is refused.
    """
    password = getattr(request, "param", PASSWORD)
    database = make_url(pg_databases()).database
    role = f"cdc_pw_{os.getpid()}"
    admin = _pg_admin(pg_server)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
        # (a utility statement takes no bound parameters; psycopg wants % doubled in the text)
        literal = password.replace("'", "''").replace("%", "%%")
        conn.exec_driver_sql(f"CREATE ROLE \"{role}\" LOGIN REPLICATION PASSWORD '{literal}'")
        conn.exec_driver_sql(f'ALTER DATABASE "{database}" OWNER TO "{role}"')
        hba = conn.exec_driver_sql("SHOW hba_file").scalar()
        enforced = os.access(hba, os.W_OK)
        if enforced:
            original = open(hba, encoding="utf-8").read()
            with open(hba, "w", encoding="utf-8") as file:
                file.write(f"host all {role} 127.0.0.1/32 scram-sha-256\n{original}")
            conn.exec_driver_sql("SELECT pg_reload_conf()")
    server = make_url(pg_server)
    yield {"role": role, "host": server.host, "port": server.port, "database": database, "enforced": enforced,
           "password": password}
    with admin.connect() as conn:
        if enforced:
            with open(hba, "w", encoding="utf-8") as file:
                file.write(original)
            conn.exec_driver_sql("SELECT pg_reload_conf()")
        conn.exec_driver_sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                             "WHERE database = %(db)s", {"db": database})
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{role}"')
    admin.dispose()


def test_postgresql_user_whose_password_has_every_url_delimiter(ws, pg_secret, monkeypatch):
    s = pg_secret
    monkeypatch.setenv("PW", PASSWORD)
    (ws.root / "ledger.pw").write_text(PASSWORD + "\n", encoding="utf-8")
    with sa.create_engine(sa.URL.create("postgresql+psycopg", s["role"], PASSWORD, s["host"], s["port"],
                                        s["database"])).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id integer PRIMARY KEY, note text)")
        conn.exec_driver_sql("INSERT INTO orders VALUES (1, 'første'), (2, 'andre')")
    ws.sql(ws.source, "CREATE TABLE entries (id INTEGER PRIMARY KEY, memo TEXT);"
                      "INSERT INTO entries VALUES (1, 'a'), (2, 'b');")

    def configure(host: str = s["host"], port: int = s["port"]) -> None:
        write_config(ws, f"  erp_pg: postgresql://{s['role']}:${{PW}}@{host}:{port}/{s['database']}\n"
                         f"  ledger_pg:\n    driver: postgresql\n    host: {host}\n    port: {port}\n"
                         f"    user: {s['role']}\n    password_file: ledger.pw\n    database: {s['database']}\n"
                         "  erp: sqlite:///source.db\n  ledger: sqlite:///target.db\n",
                     "  pg_out: {source: erp_pg, target: ledger, capture: logical, tables: [orders]}\n"
                     "  pg_in: {source: erp, target: ledger_pg, tables: [entries]}\n")

    configure()
    outputs = []
    for args in (["check"], ["init"], ["install"], ["-vv", "run", "--once"], ["-vv", "status"], ["-vv", "check"]):
        result = ws.cdc(*args, str(ws.config))
        outputs += [result.stdout, result.stderr]
        assert result.returncode == 0, result.stdout + result.stderr
    assert "postgresql+psycopg://" + s["role"] + ":***@" in outputs[0]
    assert ws.rows(ws.target, "orders") == [(1, "første"), (2, "andre")]  # read over the replication connection
    with sa.create_engine(make_url(load_config(ws.config).pairs["pg_in"].target.url)).connect() as conn:
        assert conn.exec_driver_sql("SELECT id, memo FROM entries ORDER BY id").all() == [(1, "a"), (2, "b")]
    for host, port in (("no-such-host.invalid", s["port"]), (s["host"], 1)):  # a wrong host, a closed port
        configure(host, port)
        for args in (["check"], ["-vv", "run", "--once"], ["-vv", "status"]):
            result = ws.cdc(*args, str(ws.config))
            outputs += [result.stdout, result.stderr]
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert_no_secret(*outputs)
    if s["enforced"]:  # the password is what lets the role in
        monkeypatch.setenv("PW", PASSWORD[:-1])
        configure()
        result = ws.cdc("check", str(ws.config))
        assert result.returncode == 1 and "password authentication failed" in result.stderr, result.stderr


SPACED = " Kx7q 'Lm2w\\Pz9r\"Tb4v "


@pytest.mark.parametrize("pg_secret", [SPACED], indirect=True)
def test_logical_capture_connects_with_a_password_that_has_spaces_quotes_and_backslashes(ws, pg_secret, monkeypatch):
    """The replication connection (slot creation) gets the password as it is, leading and trailing
    spaces included: it was a URL string, which libpq trims."""
    s = pg_secret
    assert s["enforced"], "the test server's pg_hba.conf must be writable, so that the password matters"
    monkeypatch.setenv("PW", SPACED)
    with sa.create_engine(sa.URL.create("postgresql+psycopg", s["role"], SPACED, s["host"], s["port"],
                                        s["database"])).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE orders (id integer PRIMARY KEY, note text)")
        conn.exec_driver_sql("INSERT INTO orders VALUES (1, 'første')")
    write_config(ws, f"  erp_pg: postgresql://{s['role']}:${{PW}}@{s['host']}:{s['port']}/{s['database']}\n"
                     "  ledger: sqlite:///target.db\n",
                 "  pg_out: {source: erp_pg, target: ledger, capture: logical, tables: [orders]}\n")
    for args in (["init"], ["install"], ["run", "--once"]):
        result = ws.cdc(*args, str(ws.config))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Kx7q" not in result.stdout + result.stderr
    with sa.create_engine(sa.URL.create("postgresql+psycopg", s["role"], SPACED, s["host"], s["port"],
                                        s["database"])).begin() as conn:
        conn.exec_driver_sql("INSERT INTO orders VALUES (2, 'andre')")
    assert ws.cdc("run", "--once", str(ws.config)).returncode == 0
    assert ws.rows(ws.target, "orders") == [(1, "første"), (2, "andre")]


@pytest.fixture
def mysql_secret(mysql_server, mysql_databases):
    """A fresh MariaDB database and a user (with every privilege on it) whose password is PASSWORD."""
    import pymysql

    server = make_url(mysql_server[0])
    database = make_url(mysql_databases()).database
    user = f"cdc_pw_{os.getpid()}"

    def admin():
        return pymysql.connect(host=server.host, port=server.port, user=server.username,
                               password=server.password or "", autocommit=True)

    with admin() as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP USER IF EXISTS '{user}'@'%'")
        cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY {conn.escape(PASSWORD)}")
        cursor.execute(f"GRANT ALL ON `{database}`.* TO '{user}'@'%'")
    yield {"user": user, "host": server.host, "port": server.port, "database": database}
    with admin() as conn, conn.cursor() as cursor:
        cursor.execute(f"DROP USER IF EXISTS '{user}'@'%'")


def test_mariadb_user_whose_password_has_every_url_delimiter(ws, mysql_secret, monkeypatch):
    s = mysql_secret
    monkeypatch.setenv("PW", PASSWORD)
    ws.sql(ws.source, "CREATE TABLE entries (id INTEGER PRIMARY KEY, memo TEXT);"
                      "INSERT INTO entries VALUES (1, 'æøå'), (2, 'b');"
                      "CREATE TABLE notes (id INTEGER PRIMARY KEY, memo TEXT);")

    def configure(url_host: str = s["host"], port: int = s["port"], field_host: str = s["host"]) -> None:
        write_config(ws, f"  erp: sqlite:///source.db\n"
                         f"  shop: mariadb://{s['user']}:${{PW}}@{url_host}:{port}/{s['database']}\n"
                         f"  ledger: {{driver: mariadb, host: {field_host}, port: {port}, user: {s['user']}, "
                         f"password: '${{PW}}', database: {s['database']}}}\n",
                     "  to_ledger: {source: erp, target: ledger, tables: [entries]}\n"
                     "  to_shop: {source: erp, target: shop, tables: [notes]}\n")

    configure()
    outputs = []
    for args in (["check"], ["init"], ["install"], ["-vv", "run", "--once"], ["-vv", "status"]):
        result = ws.cdc(*args, str(ws.config))
        outputs += [result.stdout, result.stderr]
        assert result.returncode == 0, result.stdout + result.stderr
    with sa.create_engine(make_url(load_config(ws.config).pairs["to_ledger"].target.url)).connect() as conn:
        assert conn.exec_driver_sql("SELECT id, memo FROM entries ORDER BY id").all() == [(1, "æøå"), (2, "b")]
    for host, port in (("no-such-host.invalid", s["port"]), (s["host"], 1)):
        configure(host, port, host)
        for args in (["check"], ["-vv", "run", "--once"]):
            result = ws.cdc(*args, str(ws.config))
            outputs += [result.stdout, result.stderr]
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert_no_secret(*outputs)
    monkeypatch.setenv("PW", PASSWORD[:-1])  # MariaDB checks the password: a wrong one is refused
    configure()
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 1 and "Access denied" in result.stderr, result.stderr
    assert_no_secret(result.stdout, result.stderr)


def test_a_value_outside_the_user_password_part_is_not_encoded(ws, monkeypatch):
    """A SQLite path with an @ in it, from the environment, is a path, not a user:password part."""
    monkeypatch.setenv("ERP_DIR", "a@b")
    (ws.root / "a@b").mkdir()
    ws.sql(ws.root / "a@b" / "erp.db", "CREATE TABLE t (id INTEGER PRIMARY KEY);")
    write_config(ws, "  src: sqlite:///${ERP_DIR}/erp.db\n  dst: sqlite:///target.db\n",
                 "  p: {source: src, target: dst, tables: [t]}\n")
    assert make_url(load_config(ws.config).pairs["p"].source.url).database == str(ws.root / "a@b" / "erp.db")
    result = ws.cdc("check", str(ws.config))
    assert result.returncode == 0 and "t -> t key (id)" in result.stdout, result.stdout + result.stderr


def test_the_last_line_of_defence_scrubs_a_password_whole_encoded_or_in_pieces(monkeypatch):
    import io
    from urllib.parse import quote

    from cdc import _secrets
    from cdc.cli import _Scrubbed

    monkeypatch.setattr(_secrets, "_known", set())  # this process's own, not those earlier tests loaded
    _secrets.remember(PASSWORD)
    leaky = (f"failed for {PASSWORD}; as URL text {quote(PASSWORD, safe='')}; "
             "resolving host 'Qs3c?Wd8f&Yg5k@127.0.0.1'; user \"Kx7q\"; password=Lm2w; url pg://u:Pz9r@h")
    assert_no_secret(_secrets.scrub(leaky))
    assert _secrets.scrub("nothing secret here") == "nothing secret here"
    # Short secrets (and pieces under 8 characters) are masked only as a word inside quotes, where
    # connection errors put names: elsewhere they are left, so that no text is garbled.
    _secrets.remember("20")
    assert _secrets.scrub('booked 2026-11-20, 20 changes; database "20"; host \'20@db\'; "2020"') == \
        'booked 2026-11-20, 20 changes; database "***"; host \'***@db\'; "2020"'
    written = io.StringIO()
    _Scrubbed(written).write(leaky)
    assert "***" in written.getvalue()
    assert_no_secret(written.getvalue())


@pytest.mark.parametrize("secret", ["Zq8vWx3kRt7m", "Zq8"])
def test_a_server_message_that_quotes_the_password_is_scrubbed_by_the_cli(ws, pg_server, monkeypatch, secret):
    """PostgreSQL quotes a missing database's name; here that name is the password itself (a short
    one too: inside quotes, where connection errors put names, it is masked whatever its length)."""
    monkeypatch.setenv("PW", secret)
    server = make_url(pg_server)
    write_config(ws, f"  src: sqlite:///source.db\n  dst: postgresql://{server.username}:${{PW}}@{server.host}:"
                     f"{server.port}/${{PW}}\n", "  p: {source: src, target: dst, tables: [t]}\n")
    ws.sql(ws.source, "CREATE TABLE t (id INTEGER PRIMARY KEY);")
    result = ws.cdc("-vv", "check", str(ws.config))
    assert result.returncode == 1 and "***" in result.stderr, result.stderr
    assert f'"{secret}"' not in result.stdout + result.stderr and "Zq8v" not in result.stdout + result.stderr
    assert 'database "***" does not exist' in result.stderr, result.stderr


# -- ${..} in the user:password or host part ---------------------------------------------------
@pytest.mark.parametrize("pg_secret", [PASSWORD], indirect=True)
def test_user_and_password_from_one_variable_are_split_as_in_a_url(ws, pg_secret, monkeypatch):
    """``postgresql://${LOGIN}@db/x`` with ``LOGIN=user:password`` logs in as user with password
    (it was one user name "user:password", and the refusal printed the password)."""
    s = pg_secret
    assert s["enforced"], "the test server's pg_hba.conf must be writable, so that the password matters"
    ws.sql(ws.source, "CREATE TABLE t (id INTEGER PRIMARY KEY);")
    write_config(ws, f"  src: sqlite:///source.db\n  dst: postgresql://${{LEDGER_LOGIN}}@{s['host']}:{s['port']}/"
                     f"{s['database']}\n", "  p: {source: src, target: dst, tables: [t]}\n")
    monkeypatch.setenv("LEDGER_LOGIN", f"{s['role']}:{PASSWORD}")
    url = make_url(load_config(ws.config).pairs["p"].target.url)
    assert (url.username, url.password, url.host) == (s["role"], PASSWORD, s["host"])
    outputs = []
    for args in (["check"], ["init"], ["install"], ["run", "--once"]):
        result = ws.cdc(*args, str(ws.config))
        outputs += [result.stdout, result.stderr]
        assert result.returncode == 0, result.stdout + result.stderr
    monkeypatch.setenv("LEDGER_LOGIN", f"{s['role']}:{PASSWORD[:-4]}Xy9z")  # a wrong password
    result = ws.cdc("check", str(ws.config))
    outputs += [result.stdout, result.stderr]
    assert result.returncode == 1 and f'password authentication failed for user "{s["role"]}"' in result.stderr, \
        result.stderr
    assert_no_secret(*outputs)


@pytest.mark.parametrize("value, says", [
    ("Secr3t:Pass", "error: connections.dst: 'postgresql://ledger@${PW}/regnskap' is not a database URL"),
    ("Secr3tPassHost", "error: target dst: connection failed: failed to resolve host '***'"),
    ("Sx9", "error: target dst: connection failed: failed to resolve host '***'"),
])
def test_a_secret_put_in_the_host_part_is_not_printed(ws, monkeypatch, value, says):
    """A ${PW} written where the host goes: the message names the URL as the file writes it, and a
    variable named like a secret is scrubbed from what the driver says."""
    monkeypatch.setenv("PW", value)
    ws.sql(ws.source, "CREATE TABLE t (id INTEGER PRIMARY KEY);")
    write_config(ws, "  src: sqlite:///source.db\n  dst: postgresql://ledger@${PW}/regnskap\n",
                 "  p: {source: src, target: dst, tables: [t]}\n")
    result = ws.cdc("check", str(ws.config))
    assert result.returncode in (1, 2) and result.stderr.startswith(says), result.stderr
    assert "Traceback" not in result.stderr
    assert value not in result.stdout + result.stderr and "Secr3t" not in result.stdout + result.stderr
    if "connection failed" in says:  # the pair's header line names the URL with the host masked, not encoded
        assert "postgresql+psycopg://ledger@***/regnskap" in result.stdout, result.stdout


# -- the scrubber garbles nothing ----------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["text", "csv", "json", "html"])
def test_a_short_password_garbles_no_output_and_no_report(ws, database, fmt):
    """A two-character password ("20") that every date holds: it was masked everywhere, so status
    showed "***26-11-30" and a piped report no longer matched its own SHA-256. Reports are written as
    they are, to stdout and to --output alike, even where a value is the password."""
    from test_reports import body_sha256, invoice_pair, provenance_of, run_sql

    _, target = invoice_pair(ws, database, "postgresql", password="20")
    run_sql(target, "UPDATE invoices SET amount = 1.00, ref = '20' WHERE id = 3")  # a value that is the password
    status = ws.cdc("status", "--json", str(ws.config))
    assert status.returncode == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert row["last_applied_at"].startswith("20") and row["target"].startswith("postgresql+psycopg://postgres:***@")
    for command in ("reconcile", "audit"):
        args = (command, str(ws.config), "--format", fmt) + (("--settle", "0") if command == "reconcile" else ())
        piped = ws.cdc(*args)
        written = ws.root / f"{command}.{fmt}"
        ws.cdc(*args, "--output", str(written))
        for text in (piped.stdout, written.read_text(encoding="utf-8")):
            assert "***@" in text and text.count("***") == text.count("***@")  # only the URL's password is masked
            assert provenance_of(fmt, text)["body sha256"].split(" ")[0] == body_sha256(fmt, text)
