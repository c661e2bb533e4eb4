"""Which PostgreSQL server and database a URL reaches, as libpq would connect."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from .._sql.identity import connect_args, server_host


def identity(connection_url: str) -> tuple:
    """(host, port, database) wherever the URL gives them (``host:port`` or ``?host=..&port=..``),
    with libpq's defaults filled in (PGHOST, PGPORT, PGDATABASE, then the user's name); a list of
    hosts is kept as a list. A pg_service entry is not looked into."""
    return _server(make_url(connection_url))


def _server(url: sa.URL) -> tuple:
    from psycopg import pq

    given = connect_args(url)
    defaults = {o.keyword.decode(): (o.val or o.compiled or b"").decode() for o in pq.Conninfo.get_defaults()}

    def setting(*names: str) -> str:
        value = next((given[n] for n in names if given.get(n) not in (None, "")), None)
        return str(value) if value is not None else defaults.get(names[0], "")

    hosts = ",".join(server_host(h) for h in setting("host").split(","))
    return hosts, setting("port") or "5432", setting("dbname", "database") or setting("user")
