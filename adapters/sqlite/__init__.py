"""The SQLite adapter: trigger and timestamp capture as a source; upserts as a target."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cdc.errors import SourceError

from .capabilities import CAPABILITIES
from .identity import identity as database_identity
from .fingerprint import SqliteFingerprints
from .source import TimestampSource
from .target import SqliteTarget
from .trigger import TriggerSource


def _engine(url: str, *, immediate: bool) -> sa.Engine:
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, record):
        # Let SQLAlchemy, not pysqlite, decide when a transaction begins (savepoints need it).
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        # A writer takes the write lock at BEGIN, so it never fails upgrading a read lock.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _fingerprinted(reads: Any) -> Any:
    """Give a source or target the SQLite fingerprint functions on each of its connections (and the
    adapter's capabilities)."""
    reads.capabilities = CAPABILITIES
    reads.fingerprints = SqliteFingerprints(reads)
    sa.event.listen(reads.engine, "connect", lambda dbapi_connection, record:
                    reads.fingerprints.register(dbapi_connection))
    return reads


class SqliteAdapter:
    """Capabilities and factories of the SQLite adapter."""

    capabilities = CAPABILITIES

    def database_exists(self, connection_url: str) -> bool:
        """Whether the file exists (an in-memory database always does); never creates it."""
        database = make_url(connection_url).database
        return not database or database == ":memory:" or os.path.exists(database)

    def identity(self, connection_url: str) -> tuple:
        """The database file, however its path is spelt (see identity.py)."""
        return database_identity(connection_url)

    def source(self, connection_url: str, pair: Any):
        """A Source for the pair's capture mode; SourceError if the database file is missing."""
        if not self.database_exists(connection_url):
            raise SourceError(f"source database {make_url(connection_url).database} does not exist "
                              f"(connection {pair.source.name})")
        engine = _engine(connection_url, immediate=False)
        if pair.capture == "timestamp":
            return _fingerprinted(TimestampSource(engine, pair.name, pair.timestamp, pair.source_timezone))
        return _fingerprinted(TriggerSource(engine, pair.name))

    def target(self, connection_url: str) -> SqliteTarget:
        """A Target; the database file is created on first write (by `cdc init`)."""
        return _fingerprinted(SqliteTarget(_engine(connection_url, immediate=True)))


adapter = SqliteAdapter()
