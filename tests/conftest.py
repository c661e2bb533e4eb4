"""Shared fixtures: real SQLite databases in a temporary directory, configs written as a user would."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from typing import Callable
from pathlib import Path

import pytest

import cli_fork

LEDGER_SCHEMA = """
CREATE TABLE entries (id INTEGER PRIMARY KEY, account INTEGER NOT NULL, amount NUMERIC(18,2) NOT NULL,
    currency CHAR(3) NOT NULL, memo VARCHAR(200), booked_at DATETIME);
CREATE TABLE parties (code VARCHAR(10) NOT NULL, region INTEGER NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (code, region));
"""


class Workspace:
    """A temp dir with a source database, a target path and a config file."""

    def __init__(self, root: Path):
        self.root = root
        self.source = root / "source.db"
        self.target = root / "target.db"
        self.config = root / "config.yaml"

    def sql(self, db: Path, script: str) -> None:
        """Run a script of statements in one transaction."""
        conn = sqlite3.connect(db)
        try:
            with conn:
                conn.executescript(script)
        finally:
            conn.close()

    def query(self, db: Path, sql: str, *params) -> list[tuple]:
        conn = sqlite3.connect(db)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()

    def rows(self, db: Path, table: str, order: str = "1") -> list[tuple]:
        conn = sqlite3.connect(db)
        try:
            return conn.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
        finally:
            conn.close()

    def write_config(self, pair_body: str, extra_connections: str = "") -> Path:
        body = textwrap.indent(textwrap.dedent(pair_body).strip(), " " * 4)
        self.config.write_text(
            "connections:\n"
            "  src: sqlite:///source.db\n"
            "  dst: sqlite:///target.db\n"
            f"{extra_connections}"
            "pairs:\n"
            "  p:\n"
            f"{body}\n",
            encoding="utf-8",
        )
        return self.config

    def run_and_kill(self, seconds: float, *, once: bool = False, until: Callable[[], bool] | None = None) -> bool:
        """Start `cdc run` (with --once if asked), SIGKILL it ``seconds`` after its start-up (the time
        the interpreter takes to load cdc on this machine, now), or ``seconds`` after ``until()`` came
        true (at most a minute: on a loaded machine start-up takes longer than it measured); False if it
        ended first."""
        args = [sys.executable, "-m", "cdc", "run", *(["--once"] if once else []), str(self.config)]
        with open(self.root / "run.log", "ab") as log:
            process = subprocess.Popen(args, cwd=self.root, stdout=subprocess.DEVNULL, stderr=log)
        if until is None:
            time.sleep(startup_seconds() + seconds)
        else:
            deadline = time.monotonic() + 60
            while process.poll() is None and time.monotonic() < deadline and not until():
                time.sleep(0.05)
            time.sleep(seconds)
        if process.poll() is not None:
            return False
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return True

    def kill_while(self, busy, seed, low: float, high: float, kills: int = 3) -> int:
        """`run_and_kill` again and again, each run living a random ``low``..``high`` seconds (from
        ``random.Random(seed)``), while ``busy()`` and at least ``kills`` times; returns the kills."""
        rng, done = random.Random(seed), 0
        while busy() or done < kills:
            self.run_and_kill(rng.uniform(low, high))
            done += 1
        return done

    def cdc(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run the real `cdc` command line in a process of its own (forked from one that has loaded
        cdc-sync already: see cli_fork.py; CDC_TEST_CLI=subprocess starts `python -m cdc` instead)."""
        if os.environ.get("CDC_TEST_CLI") == "subprocess":
            return subprocess.run([sys.executable, "-m", "cdc", *args], capture_output=True, text=True,
                                  timeout=timeout, cwd=self.root)
        return cli_fork.run(list(args), self.root, timeout)


_startup: list[float] = []


def startup_seconds() -> float:
    """How long `python -m cdc` takes to load here (measured once, then every fifth call again):
    kill tests add it, so a kill lands at the same point of the work on a slow or busy machine."""
    if not _startup or len(_startup) % 5 == 0:
        began = time.monotonic()
        subprocess.run([sys.executable, "-c", "import cdc.cli, cdc.adapters.postgres, cdc.adapters.mysql"],
                       check=True)
        _startup.append(time.monotonic() - began)
    else:
        _startup.append(_startup[-1])
    return _startup[-1]


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


@pytest.fixture
def ledger(ws: Workspace) -> Workspace:
    """A source with the ledger schema, a trigger-capture identity pair, initialised and installed."""
    ws.sql(ws.source, LEDGER_SCHEMA)
    ws.write_config("""
        source: src
        target: dst
        capture: trigger
        tables: [entries, parties]
        batch_size: 50
    """)
    for command in ("init", "install"):
        result = ws.cdc(command, str(ws.config))
        assert result.returncode == 0, result.stderr
    return ws


# -- PostgreSQL -------------------------------------------------------------------------
import itertools

import sqlalchemy as sa

_databases = itertools.count(1)


def _server(variable: str | None, kind: str, start, value, given=lambda url: url):
    """A session's server: the one ``variable`` names, else a local one ``start()`` makes.

    Without one the tests are skipped, except in CI (CI=true), where that is a failure.
    """
    if variable and os.environ.get(variable):
        yield given(os.environ[variable])
        return
    try:
        server = start()
    except (RuntimeError, OSError) as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{kind} is required in CI: {exc}")
        pytest.skip(f"no {kind} server: {exc}")
    try:
        yield value(server)
    finally:
        server.remove()


@pytest.fixture
def own_pg_server():
    """A PostgreSQL server of the test's own, which it may stop and start (the shared one holds
    other tests' databases)."""
    yield from _server(None, "PostgreSQL", lambda: __import__("pgserver").LocalCluster(), lambda cluster: cluster)


@pytest.fixture(scope="session")
def pg_server():
    """The URL of a PostgreSQL server with wal_level=logical: CDC_TEST_PG_URL, or a local cluster."""
    yield from _server("CDC_TEST_PG_URL", "PostgreSQL", lambda: __import__("pgserver").LocalCluster(),
                       lambda cluster: cluster.url())


@pytest.fixture
def pg_databases(pg_server):
    """A factory of fresh, empty databases on the test server (plain postgresql:// URLs), dropped after."""
    admin = sa.create_engine(pg_server.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    made = []

    def make() -> str:
        name = f"cdc_test_{os.getpid()}_{next(_databases)}"
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        made.append(name)
        return sa.engine.make_url(pg_server).set(database=name).render_as_string(hide_password=False)

    yield make
    with admin.connect() as conn:  # slots are cluster-wide and hold WAL: never leave one behind
        for name in made:
            conn.exec_driver_sql("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                 "WHERE database = %(db)s AND NOT active", {"db": name})
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def pg_url(pg_databases) -> str:
    """A fresh, empty database on the test server."""
    return pg_databases()


# -- MariaDB / MySQL ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def mysql_server():
    """The URL of a MariaDB/MySQL server with a ROW binlog: CDC_TEST_MYSQL_URL, or a local MariaDB.

    Yields (url, server): server is the LocalMariaDB (None for CDC_TEST_MYSQL_URL) so a test may
    restart it.
    """
    yield from _server("CDC_TEST_MYSQL_URL", "MariaDB", lambda: __import__("mysqlserver").LocalMariaDB(),
                       lambda server: (server.url(), server), lambda url: (url, None))


@pytest.fixture
def own_mysql_server():
    """A MariaDB server of the test's own, which it may stop and start."""
    yield from _server(None, "MariaDB", lambda: __import__("mysqlserver").LocalMariaDB(), lambda server: server)


@pytest.fixture
def mysql_databases(mysql_server):
    """A factory of fresh, empty databases on the MariaDB test server (plain mysql:// URLs), dropped after."""
    import pymysql

    url = sa.engine.make_url(mysql_server[0])
    made = []

    def admin():
        return pymysql.connect(host=url.host, port=url.port, user=url.username, password=url.password or "",
                               autocommit=True)

    def make() -> str:
        name = f"cdc_test_{os.getpid()}_{next(_databases)}"
        with admin() as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
        made.append(name)
        return url.set(database=name).render_as_string(hide_password=False)

    yield make
    with admin() as conn, conn.cursor() as cursor:
        for name in made:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def mysql_url(mysql_databases) -> str:
    """A fresh, empty database on the MariaDB test server."""
    return mysql_databases()
