"""Which MySQL/MariaDB server and database a URL reaches, as PyMySQL would connect."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from .._sql.identity import connect_args, server_host


def identity(connection_url: str) -> tuple:
    """(host, port, database) as PyMySQL would connect: the URL's ``host:port`` or ``?host=..&port=..``,
    host ``localhost`` (a Unix socket is the local server too) and port 3306 by default. ``mysql://``
    and ``mariadb://`` URLs are told apart by nothing else."""
    args = connect_args(make_url(connection_url))
    host = "localhost" if args.get("unix_socket") else server_host(args.get("host"))
    return host, int(args.get("port") or 3306), args.get("database") or args.get("db") or ""
