"""What the server adapters share in telling which server a URL reaches: the driver's own reading
of the URL, and one name for the local host."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1", "[::1]"}


def connect_args(url: sa.URL) -> dict[str, Any]:
    """The keyword arguments SQLAlchemy gives the driver for ``url`` (query parameters included)."""
    _, kwargs = url.get_dialect()().create_connect_args(url)
    return kwargs


def server_host(host: Any) -> str:
    """A host as an identity: ``localhost``, ``127.0.0.1``, ``::1`` and a Unix socket (a path, or
    ``@`` for Linux's abstract namespace) are one host, the local server; other names are kept,
    lower-cased (other names of one machine are not recognised)."""
    host = str(host or "").strip().lower()
    return "localhost" if host in _LOCAL_HOSTS or host.startswith(("/", "@")) else host
