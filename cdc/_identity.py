"""Which database a connection reaches, however its URL is spelt: two pairs that write one table
must be found whatever connection name, URL spelling or path leads each of them there.

Policy: when in doubt, two spellings are the same database. A false "same" makes `cdc check`
ask for ``shared: true`` where it was not needed; a false "different" lets two pairs overwrite
each other's rows. The URL is read by SQLAlchemy and the driver's own rules (the arguments
SQLAlchemy gives the driver, libpq's defaults), never by a pattern of our own.

- SQLite: an existing file is its device and inode (so ``./x.db``, ``//``, ``..``, symlinks and
  hard links are one file); a file not made yet is its real path (symlinked folders resolved),
  compared without case on a case-insensitive file system.
- PostgreSQL and MySQL/MariaDB: host, port and database, wherever the URL gives them (``host:port``
  or ``?host=..&port=..``), with the driver's defaults filled in (libpq's PGHOST, PGPORT,
  PGDATABASE; port 3306). ``localhost``, ``127.0.0.1``, ``::1`` and a Unix socket are one host,
  the local server; other names of one machine (its host name, another address, a pg_service
  entry) are not recognised.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1", "[::1]"}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}


def database_identity(url: str) -> tuple:
    """What identifies the database behind ``url`` (user, password and driver aside)."""
    parsed = make_url(url)
    backend = "mysql" if parsed.get_backend_name() == "mariadb" else parsed.get_backend_name()
    if backend == "sqlite":
        return backend, sqlite_file_identity(parsed.database)
    if backend == "postgresql":
        return (backend, *_postgres_server(parsed))
    if backend == "mysql":
        return (backend, *_mysql_server(parsed))
    return backend, _host(parsed.host), parsed.port or _DEFAULT_PORTS.get(backend), parsed.database or ""


def sqlite_file_identity(path: str | None) -> tuple:
    """An existing file's (device, inode); else its real path (case-folded where case does not matter)."""
    if not path or path == ":memory:":
        return ("memory",)
    try:
        found = os.stat(path)
        return "inode", found.st_dev, found.st_ino
    except OSError:
        real = os.path.realpath(path)
        return "path", real.casefold() if case_insensitive(real) else real


def case_insensitive(path: str) -> bool:
    """Whether the file system that holds ``path`` (or its nearest existing folder) ignores case:
    the folder can be reached under its own name with the case of its letters swapped."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    for candidate in (folder, *folder.parents):
        swapped = candidate.with_name(candidate.name.swapcase()) if candidate.name else candidate
        if swapped != candidate:
            return swapped.exists() and os.path.samefile(candidate, swapped)
    return sys.platform in ("darwin", "win32")  # no folder name with letters to try: the platform's default


def _connect_args(url: sa.URL) -> dict[str, Any]:
    """The keyword arguments SQLAlchemy gives the driver for ``url`` (query parameters included)."""
    _, kwargs = url.get_dialect()().create_connect_args(url)
    return kwargs


def _host(host: Any) -> str:
    host = str(host or "").strip().lower()
    return "localhost" if host in _LOCAL_HOSTS or host.startswith(("/", "@")) else host


def _postgres_server(url: sa.URL) -> tuple:
    """(host, port, database) as libpq would connect: the URL's settings, then libpq's defaults."""
    from psycopg import pq

    given = _connect_args(url)
    defaults = {o.keyword.decode(): (o.val or o.compiled or b"").decode() for o in pq.Conninfo.get_defaults()}

    def setting(*names: str) -> str:
        value = next((given[n] for n in names if given.get(n) not in (None, "")), None)
        return str(value) if value is not None else defaults.get(names[0], "")

    hosts = ",".join(_host(h) for h in setting("host").split(","))
    return hosts, setting("port") or "5432", setting("dbname", "database") or setting("user")


def _mysql_server(url: sa.URL) -> tuple:
    """(host, port, database) as PyMySQL would connect (host ``localhost`` and port 3306 by default)."""
    args = _connect_args(url)
    host = "localhost" if args.get("unix_socket") else _host(args.get("host"))
    return host, int(args.get("port") or 3306), args.get("database") or args.get("db") or ""
