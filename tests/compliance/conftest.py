"""Fixtures of the compliance suite: a pair of any source case and target kind, set up as a user would.

The servers, the `Workspace` and the CLI helpers are those of tests/conftest.py: one PostgreSQL and
one MariaDB server for the whole session, a fresh database on them for each side of each test.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile

import pytest
from sqlalchemy.engine import make_url

import cli_fork
from compliance.cases import Source
from compliance.databases import Database

_files = itertools.count(1)
#: The Debian packages' ODBC drivers (odbcinst.ini names), by dialect.
ODBC_DRIVERS = {"postgresql": "PostgreSQL Unicode", "mysql": "MariaDB Unicode", "sqlite": "SQLite3"}


def odbc_url(native: str) -> str:
    """The ODBC URL a user writes for the database ``native`` names (its user, host, port, database)."""
    url = make_url(native)
    dialect = url.get_backend_name()
    return url.set(drivername="odbc", query={"driver": ODBC_DRIVERS[dialect]}).render_as_string(hide_password=False)


class Pair:
    """A sync pair ``p`` from ``source`` (a Database of ``case``) to ``target``, through the public CLI."""

    def __init__(self, ws, case: Source, source: Database, target: Database):
        self.ws, self.case, self.source, self.target = ws, case, source, target
        self.next_id = 1

    def write_config(self, **options) -> None:
        """The config file a user writes: two connections and one pair."""
        extra = "".join(f"    {name}: {value}\n" for name, value in options.items())
        capture = "".join(f"    {line}\n" for line in self.case.pair_options.splitlines())
        self.ws.config.write_text(f"connections:\n  src: {self.source.url}\n  dst: {self.target.url}\n"
                                  f"pairs:\n  p:\n    source: src\n    target: dst\n{capture}"
                                  f"    tables: [items]\n{extra}", encoding="utf-8")

    def cdc(self, *args: str):
        """`cdc ARGS CONFIG`, whatever its exit code."""
        return self.ws.cdc(*args, str(self.ws.config))

    def ok(self, *args: str) -> str:
        """`cdc ARGS CONFIG`, which must exit 0; its stdout."""
        result = self.cdc(*args)
        assert result.returncode == 0, f"cdc {' '.join(args)}: {result.stdout}{result.stderr}"
        return result.stdout

    def start(self, *args: str) -> "Running":
        """`cdc ARGS CONFIG` started and left running, for a test to SIGKILL (forked as ``cdc`` is: see
        tests/cli_fork.py; a kill here waits on observed progress, so start-up time does not matter)."""
        return Running([*args, str(self.ws.config)], self.ws.root)

    def setup(self, **options) -> None:
        """Config, `cdc init`, `cdc install`."""
        self.write_config(**options)
        self.ok("init")
        self.ok("install")

    # -- source changes, as an application makes them -----------------------------------------
    def insert(self, row: tuple) -> tuple[str, object]:
        """The statement inserting ``row`` (id, amount, at, day, note, raw, flag), stamped now."""
        return (f"INSERT INTO items (id, amount, at, day, note, raw, flag, updated_at, deleted) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s, {self.source.now}, %s)", (*row, False))

    def insert_many(self, rows: list[tuple], per_statement: int = 200) -> list[tuple[str, object]]:
        """The statements inserting ``rows`` as ``insert`` does, ``per_statement`` rows to a statement."""
        statements = []
        for at in range(0, len(rows), per_statement):
            part = rows[at:at + per_statement]
            values = ", ".join([f"(%s, %s, %s, %s, %s, %s, %s, {self.source.now}, %s)"] * len(part))
            statements.append((f"INSERT INTO items (id, amount, at, day, note, raw, flag, updated_at, deleted) "
                               f"VALUES {values}", tuple(v for row in part for v in (*row, False))))
        return statements

    def update(self, key: int, amount, note: str) -> tuple[str, object]:
        return (f"UPDATE items SET amount = %s, note = %s, updated_at = {self.source.now} WHERE id = %s",
                (amount, note, key))

    def delete(self, key: int) -> tuple[str, object]:
        """A DELETE, or for a mode that sees no deletes by design the soft delete it reads."""
        if self.case.hard_deletes:
            return "DELETE FROM items WHERE id = %s", (key,)
        return f"UPDATE items SET deleted = %s, updated_at = {self.source.now} WHERE id = %s", (True, key)

    def plain_row(self, note: str = "Blåbær") -> tuple:
        """A new row with ordinary values and the next key."""
        key, self.next_id = self.next_id, self.next_id + 1
        return (key, f"{key}.25", None, None, note, b"\x01", True)

    def streamed(self) -> list[tuple[str, list]]:
        """(op, key) of every streamed change the target audited: in apply order; for a polling mode,
        which cannot tell an insert from an update and applies in (time, key) order, as sorted upserts."""
        found = [(op, json.loads(key)) for op, key, *_ in self.target.audit()]
        return found if self.case.every_change else self.as_polled(found)

    def expected(self, changes: list[tuple[str, list]]) -> list[tuple[str, list]]:
        """What ``streamed()`` must be for source ``changes`` (op, key) made in this order."""
        return changes if self.case.every_change else self.as_polled(changes)

    @staticmethod
    def as_polled(changes):
        return sorted(("upsert" if op != "delete" else op, key) for op, key in changes)

    def assert_target_equals_source(self) -> None:
        """Row by row, value by value: the target holds exactly the source's live rows."""
        source, target = self.source.live_rows(), self.target.rows()
        assert target == source, f"target differs from source:\n source {source}\n target {target}"


class Running:
    """A `cdc` process running in the background: ``alive()`` and ``kill()`` (SIGKILL, then reaped)."""

    def __init__(self, args: list[str], cwd):
        if os.environ.get("CDC_TEST_CLI") == "subprocess":
            self._popen = subprocess.Popen([sys.executable, "-m", "cdc", *args], cwd=cwd,
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return
        self._popen, self._outputs = None, tempfile.TemporaryDirectory(prefix="cdc-run-")
        out, err = (os.path.join(self._outputs.name, name) for name in ("stdout", "stderr"))
        self._process = cli_fork._fork_context().Process(target=cli_fork._child,
                                                         args=(args, str(cwd), dict(os.environ), out, err))
        self._process.start()

    def alive(self) -> bool:
        return self._popen.poll() is None if self._popen else self._process.is_alive()

    def kill(self) -> None:
        if self._popen:
            self._popen.kill()
            self._popen.wait()
            return
        self._process.kill()
        self._process.join()
        self._outputs.cleanup()


@pytest.fixture
def databases(ws, request):
    """A factory: a fresh empty database of a kind ('sqlite', 'postgresql', 'mysql'; 'odbc-<one of them>':
    the same reached through its ODBC driver)."""
    def make(kind: str) -> Database:
        dialect = kind.removeprefix("odbc-")
        if dialect == "sqlite":
            native = f"sqlite:///{ws.root / f'db{next(_files)}.db'}"
        else:
            native = request.getfixturevalue("pg_databases" if dialect == "postgresql" else "mysql_databases")()
        return Database(kind, odbc_url(native) if kind.startswith("odbc-") else native, native)

    return make


@pytest.fixture
def make_pair(ws, databases):
    """A factory: (source case, target kind, target note type) -> a Pair whose source holds the items table."""
    def make(case: Source, target_kind: str, target_note: str = "TEXT") -> Pair:
        source, target = databases(case.kind), databases(target_kind)
        source.create_items("source")
        target.create_items("target", note=target_note)
        return Pair(ws, case, source, target)

    return make
