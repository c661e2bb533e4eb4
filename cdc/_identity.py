"""Which database a connection reaches, however its URL is spelt: two pairs that write one table
must be found whatever connection name, URL spelling or path leads each of them there.

Policy: when in doubt, two spellings are the same database. A false "same" makes `cdc check`
ask for ``shared: true`` where it was not needed; a false "different" lets two pairs overwrite
each other's rows. Each adapter reads its URLs by SQLAlchemy and the driver's own rules (see
``Adapter.identity`` in adapters/base.py: a SQLite file by its inode, a server by host, port and
database with the driver's defaults), never by a pattern of our own.
"""

from __future__ import annotations

from . import registry


def database_identity(url: str) -> tuple:
    """What identifies the database behind ``url`` (user, password and driver aside): the serving
    adapter's name, then what its ``identity`` says; ConfigError if no adapter serves the URL."""
    adapter = registry.adapter_for(url)
    return (adapter.capabilities.name, *adapter.identity(url))
