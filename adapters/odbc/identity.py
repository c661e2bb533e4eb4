"""Which database an ODBC URL reaches, however it is spelt (see _connect.reach)."""

from __future__ import annotations

from ._connect import reach


def identity(connection_url: str) -> tuple:
    """(dialect, server, port, database), or for a DSN (dialect, 'dsn', name, database), or for a
    connection string its settings but the user and password: equal for URLs that reach one database
    the same way (a DSN and the server it names are not known to be one)."""
    return reach(connection_url).server
