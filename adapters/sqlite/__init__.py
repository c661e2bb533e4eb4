"""The SQLite adapter: trigger and timestamp capture as a source; upserts as a target."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cdc.errors import SourceError

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
    """Give a source or target the SQLite fingerprint functions on each of its connections."""
    reads.fingerprints = SqliteFingerprints(reads)
    sa.event.listen(reads.engine, "connect", lambda dbapi_connection, record:
                    reads.fingerprints.register(dbapi_connection))
    return reads


class SqliteAdapter:
    """Capabilities and factories of the SQLite adapter."""

    name = "sqlite"
    backends = ("sqlite",)
    capture_modes = ("trigger", "timestamp")
    supports_in_db_checksum = True  # through registered functions
    upsert_style = "on_conflict"
    creates_database_on_connect = True  # a missing file is created by the first connection

    def database_exists(self, url: str) -> bool:
        database = make_url(url).database
        return not database or database == ":memory:" or os.path.exists(database)

    def source(self, pair: Any):
        """A Source for the pair's capture mode; SourceError if the database file is missing."""
        if not self.database_exists(pair.source.url):
            raise SourceError(f"source database {make_url(pair.source.url).database} does not exist "
                              f"(connection {pair.source.name})")
        engine = _engine(pair.source.url, immediate=False)
        if pair.capture == "timestamp":
            return _fingerprinted(TimestampSource(engine, pair.name, pair.timestamp, pair.source_timezone))
        return _fingerprinted(TriggerSource(engine, pair.name))

    def target(self, url: str) -> SqliteTarget:
        """A Target; the database file is created on first write (by `cdc init`)."""
        return _fingerprinted(SqliteTarget(_engine(url, immediate=True)))


adapter = SqliteAdapter()
