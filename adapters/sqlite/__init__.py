"""The SQLite adapter: trigger and timestamp capture as a source; upserts as a target."""

from __future__ import annotations

import os
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cdc.errors import SourceError, TargetError

from .capabilities import CAPABILITIES
from .identity import identity as database_identity
from .fingerprint import SqliteFingerprints
from .source import TimestampSource
from .target import SqliteTarget
from .trigger import TriggerSource


def _file(path: str | None) -> tuple[int, int] | None:
    """The identity (device, inode) of the database file now; None for memory or a missing file."""
    if not path or path == ":memory:":
        return None
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _engine(url: str, *, immediate: bool, missing: type[Exception]) -> sa.Engine:
    engine = sa.create_engine(url, connect_args={"timeout": 30})
    path = make_url(url).database

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, record):
        # Let SQLAlchemy, not pysqlite, decide when a transaction begins (savepoints need it).
        dbapi_connection.isolation_level = None
        record.info["file"] = _file(path)

    @sa.event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection, record, proxy):
        # A pooled connection keeps reading the file it opened. When the path now names another
        # file (a backup copied in and renamed over it), reconnect so the pair reads what is there
        # and its checks see the restore, instead of streaming from a deleted file for ever.
        now = _file(path)
        if now == record.info.get("file"):
            return
        if now is None and path and path != ":memory:":
            raise missing(f"database file {path} was removed while cdc-sync had it open")
        raise sa.exc.DisconnectionError(f"database file {path} was replaced")

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

    def capabilities_for(self, connection_url: str):
        return CAPABILITIES

    def source(self, connection_url: str, pair: Any):
        """A Source for the pair's capture mode; SourceError if the database file is missing."""
        if not self.database_exists(connection_url):
            raise SourceError(f"source database {make_url(connection_url).database} does not exist "
                              f"(connection {pair.source.name})")
        engine = _engine(connection_url, immediate=False, missing=SourceError)
        if pair.capture == "timestamp":
            return _fingerprinted(TimestampSource(engine, pair.name, pair.timestamp, pair.source_timezone))
        return _fingerprinted(TriggerSource(engine, pair.name))

    def target(self, connection_url: str) -> SqliteTarget:
        """A Target; the database file is created on first write (by `cdc init`)."""
        return _fingerprinted(SqliteTarget(_engine(connection_url, immediate=True, missing=TargetError)))


adapter = SqliteAdapter()
